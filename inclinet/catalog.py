"""Galaxy catalogs: the original pipe-separated table and plain CSV, and the label rules.

Two formats are read, detected from the header line:

* the original IncliNET/EDD table: fields separated by ``|`` and padded with spaces, one
  header line, the columns of :data:`CATALOG_COLUMNS` (only ``pgc`` and ``inc`` are
  required when reading; the inclination columns are the ones that matter);
* a plain comma-separated CSV with at least ``pgc`` and ``inc`` and optionally
  ``inc_flg``, ``inc_e``, ``inc_n``, ``inc_note``, ``fon``, ``pa``, ``b_a``, ``d25``.

Column meanings (as in the original): ``inc`` integer inclination in degrees (0 when the
galaxy is flagged), ``inc_e`` its uncertainty, ``inc_flg`` 0 accepted / 1 flagged,
``inc_n`` number of measurements, ``inc_note`` bracketed reason tags (``[face_on]``...),
``fon`` ``F`` for face-on, ``pa`` position angle in degrees (the angle by which the sky
image was rotated to put the semi-major axis horizontal in the ``d25x2_rot`` images),
``b_a`` axial ratio, ``d25`` major-axis diameter in arcmin.

The original files have 140 fields per line (the expansion of the column list); older
descriptions count 139. :data:`CATALOG_COLUMNS` is the exact list of the original header.
"""

import csv
import dataclasses
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from inclinet.errors import InputError
from inclinet.io import atomic_write_text
from inclinet.naming import DEFAULT_ROOT, raw_image_names

_BANDS5 = ("u", "g", "r", "i", "z")


def _per_band(prefix):
    return [f"{prefix}_{band}" for band in _BANDS5]


CATALOG_COLUMNS = tuple(
    [
        "pgc",
        "ra",
        "dec",
        "gl",
        "gb",
        "sgl",
        "sgb",
        "Vhel",
        "Vls",
        "d25",
        "b_a",
        "pa",
        "ty",
        "type",
        "sdss",
        "alfa100",
        "QA_sdss",
        "QA_wise",
        "ebv",
    ]
    + [f"{band}_mag" for band in _BANDS5]
    + [f"{band}_Rasy" for band in _BANDS5]
    + _per_band("A")
    + ["Sba", "Spa"]
    + _per_band("mu0")
    + _per_band("mu50")
    + _per_band("mu90")
    + _per_band("m255")
    + _per_band("disc_mu0")
    + _per_band("h")
    + _per_band("R50")
    + _per_band("R90")
    + _per_band("R255")
    + _per_band("C82")
    + _per_band("d_m_ext")
    + ["w1_mag", "w2_mag", "w1_Rasy", "w2_Rasy", "A_w1", "A_w2", "Wba", "Wpa"]
    + [
        f"{name}_{w}"
        for name in ("mu0", "mu50", "mu90", "m255", "disc_mu0", "h", "R50", "R90", "R255", "C82", "d_m_ext")
        for w in ("w1", "w2")
    ]
    + [
        "Sqlt",
        "Wqlt",
        "dst",
        "trl",
        "nsp",
        "fon",
        "fnt",
        "cwd",
        "ovm",
        "fov",
        "mlp",
        "bts",
        "unc",
        "note",
        "inc",
        "inc_e",
        "inc_flg",
        "inc_n",
        "inc_note",
    ]
)

#: Text/flag columns: written blank when a row does not give them.
TEXT_COLUMNS = frozenset(
    ["type", "dst", "trl", "nsp", "fon", "fnt", "cwd", "ovm", "fov", "mlp", "bts", "unc", "note", "inc_note"]
)
#: Integer columns: written ``0`` when missing.
INTEGER_COLUMNS = frozenset(["pgc", "sdss", "alfa100", "QA_sdss", "QA_wise", "Sqlt", "Wqlt", "inc", "inc_flg", "inc_n"])
#: The columns a plain CSV catalog is written with (and may have when read).
CSV_COLUMNS = ("pgc", "inc", "inc_e", "inc_flg", "inc_n", "inc_note", "fon", "pa", "b_a", "d25")
REQUIRED_COLUMNS = ("pgc", "inc")


def label_string(inc, inc_flg, fon, inc_note):
    """The label of a catalog row as the original ``data_prep.py`` builds it.

    ``"F"`` (face-on) if the row is flagged and either ``fon`` is ``F`` or ``inc_note``
    contains ``face_on``; ``"0"`` (rejected, class J) if flagged otherwise; else the
    integer inclination as text (``"61"``).
    """
    flagged = int(inc_flg or 0) > 0
    fon_text = "".join(str(fon or "").split())
    if flagged and (fon_text == "F" or "face_on" in str(inc_note or "")):
        return "F"
    if flagged:
        return "0"
    return str(int(inc))


def numeric_class(label):
    """``"0"`` -> 0 (rejected), ``"F"`` -> 1 (face-on), a number -> its integer value."""
    text = str(label).strip()
    if text == "F":
        return 1
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid label {label!r}; must be 'F', '0' or an integer inclination") from None


def binary_label(numeric_class):
    """1 = reject (numeric class below 10: J or F), 0 = accept."""
    return 1 if int(numeric_class) < 10 else 0


#: Regression range of an accepted row's inclination, degrees.
INCLINATION_RANGE = (45, 90)
#: Numeric class of an accepted row (``inc_flg`` 0) whose ``inc`` cannot be a label: below
#: 10 (it would read as the J/F reject classes) or above 90. Stages leave such galaxies
#: out of both tasks and record why (split's report) instead of relabelling them.
OUT_OF_RANGE = -1


def label_problem(inc, inc_flg):
    """Why an accepted catalog row's inclination cannot be used as a label (one phrase), or None.

    An accepted row (``inc_flg`` 0) with ``inc`` below 10 would otherwise become a reject
    (the binary rule is "numeric class below 10") and one above 90 is impossible: both are
    catalog errors. Rows with ``inc`` 10..44 are not refused here: they stay accepted
    galaxies for the binary task and are left out of regression (split reports them).
    """
    if int(inc_flg or 0) > 0:
        return None
    if not 10 <= int(inc) <= INCLINATION_RANGE[1]:
        return (
            f"accepted row (inc_flg 0) with inc {int(inc)}, not an inclination of 10..90; "
            "left out of both tasks: fix inc or flag the row in the catalog"
        )
    return None


@dataclass(frozen=True)
class Galaxy:
    """One catalog row; ``line`` is its 1-based line number in the file (for messages)."""

    pgc: int
    inc: int
    inc_e: float = 0.0
    inc_flg: int = 0
    inc_n: int = 0
    inc_note: str = ""
    fon: str = ""
    pa: float = 0.0
    b_a: float = 0.0
    d25: float = 0.0
    line: int = 0

    @property
    def label(self):
        return label_string(self.inc, self.inc_flg, self.fon, self.inc_note)

    @property
    def numeric_class(self):
        """The label as a number; :data:`OUT_OF_RANGE` for a row :func:`label_problem` refuses."""
        if label_problem(self.inc, self.inc_flg):
            return OUT_OF_RANGE
        return numeric_class(self.label)

    @property
    def label_problem(self):
        return label_problem(self.inc, self.inc_flg)

    @property
    def binary(self):
        return binary_label(self.numeric_class)

    def as_row(self):
        """The catalog fields as a dict (without ``line``), ready for :func:`write_catalog`."""
        row = dataclasses.asdict(self)
        row.pop("line")
        return row


# -- reading ------------------------------------------------------------------------------


def read_catalog(path):
    """Read a catalog (pipe or comma format, detected from the header) into Galaxies.

    Rows come back in file order. Raises :class:`InputError` naming the file, line and
    column for an empty file, an unknown separator, a missing required column, a row with
    the wrong number of fields, a value that is not a number, or a duplicate ``pgc``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: catalog not found; give the path of an existing catalog file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; give the path of a catalog file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc}); is this really a catalog?") from None
    except PermissionError:
        raise InputError(f"{path}: catalog not readable (permission denied); fix its permissions") from None
    except OSError as exc:
        raise InputError(f"{path}: catalog cannot be read ({exc.strerror or exc}); check the file") from None
    lines = text.splitlines()
    header_index = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None)
    if header_index is None:
        raise InputError(f"{path}: empty catalog; it needs a header line with at least pgc,inc and one row")
    header_line = lines[header_index]
    header_no = header_index + 1
    if "|" in header_line:
        fmt = "pipe"
        names = [name.strip() for name in header_line.split("|")]
    elif "," in header_line:
        fmt = "csv"
        names = [name.strip() for name in next(csv.reader([header_line]))]
    else:
        separator = _guess_separator(header_line)
        raise InputError(
            f"{path}: line {header_no}: cannot detect the column separator"
            + (f" (found {separator!r})" if separator else "")
            + "; a catalog is either '|'-separated (the original format) or comma-separated CSV"
        )
    _check_header(path, header_no, names)
    index = {name: position for position, name in enumerate(names)}

    galaxies = []
    seen = {}
    for line_index in range(header_index + 1, len(lines)):
        line = lines[line_index]
        line_no = line_index + 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if fmt == "pipe":
            fields = [field.strip() for field in line.split("|")]
        else:
            fields = [field.strip() for field in next(csv.reader([line]))]
        if len(fields) != len(names):
            raise InputError(
                f"{path}: line {line_no}: {len(fields)} fields, the header has {len(names)}; "
                f"check the separators on this line ({'|' if fmt == 'pipe' else ','} between every column)"
            )
        galaxy = _parse_row(path, line_no, fields, index)
        if galaxy.pgc in seen:
            raise InputError(
                f"{path}: line {line_no}: column pgc: duplicate pgc {galaxy.pgc} (first on line {seen[galaxy.pgc]}); "
                "every galaxy must appear once"
            )
        seen[galaxy.pgc] = line_no
        galaxies.append(galaxy)
    if not galaxies:
        raise InputError(f"{path}: the catalog has a header but no rows; add at least one galaxy")
    return galaxies


def _guess_separator(line):
    for separator in (";", "\t"):
        if separator in line:
            return separator
    return ""


def _check_header(path, line_no, names):
    empty = [position + 1 for position, name in enumerate(names) if not name]
    if empty:
        raise InputError(f"{path}: line {line_no}: column {empty[0]} of the header has no name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"{path}: line {line_no}: column {duplicates[0]} appears more than once in the header")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        separator = _guess_separator(",".join(names))
        hint = f" (the header seems to use {separator!r} as separator inside a field)" if separator else ""
        raise InputError(
            f"{path}: line {line_no}: missing column {', '.join(missing)}{hint}; "
            f"a catalog needs at least the columns {', '.join(REQUIRED_COLUMNS)}"
        )


def _parse_row(path, line_no, fields, index):
    def raw(name):
        position = index.get(name)
        return "" if position is None else fields[position]

    def number(name, kind, default):
        text = raw(name)
        if text == "":
            return default
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"{path}: line {line_no}: column {name}: {text!r} is not a number; "
                f"write {'an integer' if kind is int else 'a number'} (or leave it blank)"
            ) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"{path}: line {line_no}: column {name}: {text!r} is not a finite number")
        return int(round(value)) if kind is int else value

    pgc_text = raw("pgc")
    if pgc_text == "":
        raise InputError(f"{path}: line {line_no}: column pgc: empty; every row needs its pgc id")
    pgc = number("pgc", int, None)
    if pgc <= 0 or float(pgc_text) != pgc:
        raise InputError(f"{path}: line {line_no}: column pgc: {pgc_text!r} is not a positive integer id")
    inc_flg = number("inc_flg", int, 0)
    inc_text = raw("inc")
    if inc_text == "" and inc_flg <= 0:
        raise InputError(
            f"{path}: line {line_no}: column inc: empty on an accepted row (inc_flg=0); "
            "give the inclination in degrees or flag the row"
        )
    inc = number("inc", int, 0)
    return Galaxy(
        pgc=pgc,
        inc=inc,
        inc_e=number("inc_e", float, 0.0),
        inc_flg=inc_flg,
        inc_n=number("inc_n", int, 0),
        inc_note=raw("inc_note"),
        fon=raw("fon"),
        pa=number("pa", float, 0.0),
        b_a=number("b_a", float, 0.0),
        d25=number("d25", float, 0.0),
        line=line_no,
    )


# -- writing ------------------------------------------------------------------------------


def _format(name, value):
    if value is None:
        value = ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = str(int(value))
    elif isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        text = str(int(value))
    else:
        value = float(value)
        text = str(int(value)) if name in INTEGER_COLUMNS and value.is_integer() else repr(value)
    if "\n" in text or "\r" in text or "|" in text:
        raise InputError(f"column {name}: value {text!r} contains '|' or a line break; it cannot be written")
    return text


def _default(name):
    if name in TEXT_COLUMNS:
        return ""
    if name in INTEGER_COLUMNS:
        return "0"
    return "0.00"


def _rows_as_dicts(rows):
    out = []
    for row in rows:
        if isinstance(row, Galaxy):
            row = row.as_row()
        row = dict(row)
        if "pgc" not in row or "inc" not in row:
            raise InputError(f"catalog row {row!r} lacks pgc or inc; both are required")
        out.append(row)
    return out


def write_catalog(path, rows, *, fmt="pipe"):
    """Write rows (dicts or :class:`Galaxy`) as a catalog, atomically.

    ``fmt="pipe"`` writes the original layout with every column of :data:`CATALOG_COLUMNS`
    (photometry not given is written ``0.00``, flags and notes blank); ``fmt="csv"`` writes
    a comma CSV with :data:`CSV_COLUMNS` plus any other catalog column the rows give.
    """
    if fmt not in ("pipe", "csv"):
        raise ValueError(f"invalid fmt: {fmt!r}; must be 'pipe' or 'csv'")
    rows = _rows_as_dicts(rows)
    known = set(CATALOG_COLUMNS) | {"line"}
    unknown = sorted({key for row in rows for key in row} - known)
    if unknown:
        raise InputError(f"catalog rows have unknown column(s) {', '.join(unknown)}; see catalog.CATALOG_COLUMNS")
    if fmt == "csv":
        given = {key for row in rows for key in row}
        columns = list(CSV_COLUMNS) + [name for name in CATALOG_COLUMNS if name in given and name not in CSV_COLUMNS]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(name, row[name]) if name in row else _default(name) for name in columns])
        atomic_write_text(path, buffer.getvalue())
        return
    table = [[_format(name, row[name]) if name in row else _default(name) for name in CATALOG_COLUMNS] for row in rows]
    widths = [max([len(name)] + [len(cells[i]) for cells in table]) for i, name in enumerate(CATALOG_COLUMNS)]
    lines = [" " + " | ".join(name.rjust(width) for name, width in zip(CATALOG_COLUMNS, widths))]
    for cells in table:
        lines.append(" " + " | ".join(cell.rjust(width) for cell, width in zip(cells, widths)))
    atomic_write_text(path, "\n".join(lines) + "\n")


# -- raw images -----------------------------------------------------------------------------

_ROOT_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")


def find_raw_image(data_dir, pgc, band, root=DEFAULT_ROOT):
    """The raw image of a galaxy in a band under ``data_dir``, or None if nothing has its name.

    g, r, i: ``pgc<id>_<root>_<band>.png``; gri: ``..._gri.sdss.jpg``, then ``..._gri.jpg``.
    """
    if not _ROOT_PATTERN.match(str(root)):
        raise ValueError(f"invalid root: {root!r}; must be a plain file-name part like {DEFAULT_ROOT}")
    data_dir = Path(data_dir)
    candidates = [data_dir / name for name in raw_image_names(pgc, band, root)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    # Something else under an image's name (a directory, a FIFO, a broken link or a link
    # loop): return it, so that reading it reports what it is rather than "no image".
    for candidate in candidates:
        if os.path.lexists(candidate):
            return candidate
    return None
