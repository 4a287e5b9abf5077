"""Catalog reading/writing, label rules and raw-image discovery."""

import pytest

from inclinet.catalog import (
    CATALOG_COLUMNS,
    Galaxy,
    binary_label,
    find_raw_image,
    label_string,
    numeric_class,
    read_catalog,
    write_catalog,
)
from inclinet.errors import InputError

ROWS = [
    {
        "pgc": 44182,
        "inc": 61,
        "inc_e": 4.0,
        "inc_flg": 0,
        "inc_n": 12,
        "inc_note": "[standard]",
        "pa": 113.5,
        "b_a": 0.51,
        "d25": 10.47,
    },
    {"pgc": 118, "inc": 0, "inc_flg": 1, "fon": "F", "inc_note": "[face_on]", "inc_n": 3},
    {"pgc": 129, "inc": 0, "inc_flg": 1, "inc_note": "[merger] [multiple]", "inc_n": 4},
    {"pgc": 354, "inc": 88, "inc_e": 2.5, "inc_flg": 0, "inc_n": 5, "pa": 7.25, "b_a": 0.18, "d25": 1.2},
]


def _fields(line):
    return [field.strip() for field in line.split("|")]


def test_columns_are_the_original_header():
    assert len(CATALOG_COLUMNS) == len(set(CATALOG_COLUMNS)) == 140
    assert CATALOG_COLUMNS[:12] == ("pgc", "ra", "dec", "gl", "gb", "sgl", "sgb", "Vhel", "Vls", "d25", "b_a", "pa")
    assert CATALOG_COLUMNS[-5:] == ("inc", "inc_e", "inc_flg", "inc_n", "inc_note")
    assert CATALOG_COLUMNS.index("fon") == CATALOG_COLUMNS.index("note") - 8
    assert "d_m_ext_w2" in CATALOG_COLUMNS and "mu90_z" in CATALOG_COLUMNS


@pytest.mark.parametrize("fmt", ["pipe", "csv"])
def test_round_trip(tmp_path, fmt):
    path = tmp_path / "catalog.csv"
    write_catalog(path, ROWS, fmt=fmt)
    galaxies = read_catalog(path)
    assert [g.pgc for g in galaxies] == [44182, 118, 129, 354]
    assert [g.line for g in galaxies] == [2, 3, 4, 5]
    first = galaxies[0]
    assert (first.inc, first.inc_e, first.inc_flg, first.inc_n, first.inc_note) == (61, 4.0, 0, 12, "[standard]")
    assert (first.pa, first.b_a, first.d25) == (113.5, 0.51, 10.47)
    assert [g.label for g in galaxies] == ["61", "F", "0", "88"]
    # Galaxies written back give the same galaxies again.
    again = tmp_path / "again.csv"
    write_catalog(again, galaxies, fmt=fmt)
    assert read_catalog(again) == galaxies


def test_pipe_layout_defaults(tmp_path):
    path = tmp_path / "catalog.csv"
    write_catalog(path, ROWS[:2])
    header, first, second = path.read_text().splitlines()
    assert "," not in header
    names = _fields(header)
    assert tuple(names) == CATALOG_COLUMNS
    values = dict(zip(names, _fields(second)))
    assert values["g_mag"] == "0.00" and values["Wba"] == "0.00"
    assert values["note"] == "" and values["nsp"] == ""
    assert values["fon"] == "F" and values["inc_flg"] == "1" and values["inc"] == "0"
    # Space padded: every field of a column has the same width.
    assert [len(f) for f in header.split("|")] == [len(f) for f in first.split("|")]


def test_reads_original_style_pipe_file(tmp_path):
    values = {name: "0.00" for name in CATALOG_COLUMNS}
    flags = ("dst", "trl", "nsp", "fon", "fnt", "cwd", "ovm", "fov", "mlp", "bts", "unc", "note", "inc_note")
    values.update({name: "" for name in flags})
    values.update(
        {
            "pgc": "676",
            "d25": "0.91",
            "b_a": "0.69",
            "pa": "88.3",
            "type": "  Sbc    ",
            "inc": "71",
            "inc_e": "3",
            "inc_flg": "0",
            "inc_n": "5",
            "note": "a note, with commas",
        }
    )
    header = " | ".join(f"{name:>9}" for name in CATALOG_COLUMNS)
    row = " | ".join(f"{values[name]:>9}" for name in CATALOG_COLUMNS)
    path = tmp_path / "EDD.csv"
    path.write_text(f"{header}\n{row}\n")
    (galaxy,) = read_catalog(path)
    assert galaxy == Galaxy(
        pgc=676, inc=71, inc_e=3.0, inc_flg=0, inc_n=5, inc_note="", fon="", pa=88.3, b_a=0.69, d25=0.91, line=2
    )


def test_plain_csv_minimal_columns(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("pgc,inc\n5,61\n7,90\n")
    galaxies = read_catalog(path)
    assert [(g.pgc, g.inc, g.inc_flg, g.label) for g in galaxies] == [(5, 61, 0, "61"), (7, 90, 0, "90")]
    path.write_text("pgc, inc, inc_flg, inc_note\n5,,1,[face_on]\n6,0,1,\r\n")
    assert [g.label for g in read_catalog(path)] == ["F", "0"]


@pytest.mark.parametrize(
    "inc, inc_flg, fon, inc_note, label",
    [
        (61, 0, "", "[standard]", "61"),
        (0, 1, "F", "[face_on]", "F"),
        (0, 1, " F ", "", "F"),  # fon is compared after collapsing whitespace
        (0, 1, "", "[merger] [face_on]", "F"),
        (0, 1, "", "[multiple]", "0"),
        (0, 1, "", "", "0"),
        (30, 0, "F", "[face_on]", "30"),  # not flagged: the inclination wins
        (0, 2, "", "[bad_TF]", "0"),
    ],
)
def test_label_rules(inc, inc_flg, fon, inc_note, label):
    assert label_string(inc, inc_flg, fon, inc_note) == label
    galaxy = Galaxy(pgc=1, inc=inc, inc_flg=inc_flg, fon=fon, inc_note=inc_note)
    assert galaxy.label == label


def test_numeric_and_binary_classes():
    assert [numeric_class(x) for x in ("0", "F", "45", "61", "90")] == [0, 1, 45, 61, 90]
    assert [binary_label(c) for c in (0, 1, 45, 90)] == [1, 1, 0, 0]
    assert Galaxy(pgc=1, inc=0, inc_flg=1, fon="F").numeric_class == 1
    assert Galaxy(pgc=1, inc=0, inc_flg=1).binary == 1
    assert Galaxy(pgc=1, inc=77).binary == 0
    with pytest.raises(ValueError, match="label"):
        numeric_class("J")


def _write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("", r"bad\.csv: empty catalog"),
        ("\n   \n", r"empty catalog"),
        ("pgc,inc\n", r"no rows"),
        ("pgc,inc_flg\n1,0\n", r"bad\.csv: line 1: missing column inc"),
        ("  pgc | ra \n 1 | 2\n", r"line 1: missing column inc"),
        ("pgc,inc\n1,61\n2,sixty\n", r"bad\.csv: line 3: column inc: 'sixty' is not a number"),
        ("pgc,inc,pa\n1,61,north\n", r"line 2: column pa: 'north'"),
        ("pgc,inc\n1,61\n\n1,62\n", r"line 4: column pgc: duplicate pgc 1 \(first on line 2\)"),
        ("pgc;inc\n1;61\n", r"line 1: cannot detect the column separator \(found ';'\)"),
        ("pgc\tinc\n1\t61\n", r"line 1: cannot detect the column separator \(found '\\t'\)"),
        ("pgc,inc\n1,61\n2,62,7\n", r"line 3: 3 fields, the header has 2"),
        (" pgc | inc \n 1 | 61\n 2 \n", r"line 3: 1 fields, the header has 2"),
        ("pgc,inc\nx12,61\n", r"line 2: column pgc: 'x12' is not a number"),
        ("pgc,inc\n-4,61\n", r"line 2: column pgc: '-4' is not a positive integer"),
        ("pgc,inc,inc_flg\n1,,0\n", r"line 2: column inc: empty on an accepted row"),
        ("pgc,inc,pgc\n1,2,3\n", r"column pgc appears more than once"),
    ],
)
def test_bad_catalogs(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=pattern):
        read_catalog(path)


def test_missing_and_binary_catalog_files(tmp_path):
    with pytest.raises(InputError, match="catalog not found"):
        read_catalog(tmp_path / "nope.csv")
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(InputError, match="not a UTF-8"):
        read_catalog(path)


def test_write_rejects_bad_rows(tmp_path):
    with pytest.raises(InputError, match="unknown column"):
        write_catalog(tmp_path / "c.csv", [{"pgc": 1, "inc": 50, "colour": "red"}])
    with pytest.raises(InputError, match="lacks pgc or inc"):
        write_catalog(tmp_path / "c.csv", [{"pgc": 1}])
    with pytest.raises(InputError, match="contains"):
        write_catalog(tmp_path / "c.csv", [{"pgc": 1, "inc": 50, "note": "a|b"}])
    with pytest.raises(ValueError, match="fmt"):
        write_catalog(tmp_path / "c.csv", ROWS, fmt="xlsx")
    assert not (tmp_path / "c.csv").exists()


def test_find_raw_image(tmp_path):
    (tmp_path / "pgc5_d25x2_rot_g.png").write_bytes(b"x")
    (tmp_path / "pgc5_d25x2_rot_gri.jpg").write_bytes(b"x")
    assert find_raw_image(tmp_path, 5, "g") == tmp_path / "pgc5_d25x2_rot_g.png"
    assert find_raw_image(tmp_path, 5, "r") is None
    assert find_raw_image(tmp_path, 5, "gri") == tmp_path / "pgc5_d25x2_rot_gri.jpg"
    (tmp_path / "pgc5_d25x2_rot_gri.sdss.jpg").write_bytes(b"x")
    assert find_raw_image(tmp_path, 5, "gri") == tmp_path / "pgc5_d25x2_rot_gri.sdss.jpg"
    (tmp_path / "pgc5_other_i.png").write_bytes(b"x")
    assert find_raw_image(tmp_path, 5, "i", root="other") == tmp_path / "pgc5_other_i.png"
    assert find_raw_image(tmp_path, 6, "g") is None
    with pytest.raises(ValueError, match="root"):
        find_raw_image(tmp_path, 5, "g", root="../x")


def test_accepted_row_with_impossible_inclination_is_refused_not_made_a_reject():
    from inclinet.catalog import OUT_OF_RANGE, Galaxy

    wrong = Galaxy(pgc=1, inc=5, inc_flg=0)
    assert wrong.label == "5"  # the original label text is kept (file names)
    assert wrong.numeric_class == OUT_OF_RANGE and "inc 5" in wrong.label_problem
    assert Galaxy(pgc=2, inc=95, inc_flg=0).numeric_class == OUT_OF_RANGE
    assert Galaxy(pgc=3, inc=30, inc_flg=0).numeric_class == 30  # an accept, left out of regression by split
    assert Galaxy(pgc=4, inc=0, inc_flg=1).numeric_class == 0 and Galaxy(pgc=4, inc=0, inc_flg=1).label_problem is None


def test_unreadable_catalog_is_one_clear_error(tmp_path, monkeypatch):
    from pathlib import Path

    from inclinet.catalog import read_catalog
    from inclinet.errors import InputError

    path = tmp_path / "catalog.csv"
    path.write_text("pgc,inc\n1,60\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(InputError, match="catalog.csv: catalog not readable \\(permission denied\\)"):
        read_catalog(path)
    monkeypatch.undo()
    with pytest.raises(InputError, match="not a regular file"):
        read_catalog(tmp_path)
