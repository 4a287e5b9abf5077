"""The survey catalog: its columns, measuring one catalog chunk in bounded memory, merging chunks, the summary.

One row per galaxy. The columns, in order:

* ``pgc``; ``status`` (``ok``: every band measured, ``partial``: measured from the bands it
  has, ``failed``: no band could be measured); ``reason`` (why a band is missing or
  unreadable, ``band: reason`` joined by ``; ``); ``bands`` (the measured bands, ``g,r,i,gri``);
* the ensemble over every regression member and measured band: ``inc_median``,
  ``inc_mean``, ``inc_std`` (degrees; population standard deviation); ``p_reject`` (median
  over the bands of the binary members' median P(reject), percent); ``peer`` (median over
  the bands of the classical peer's inclination) and ``peer_method``; ``ood`` (any band out
  of the training distribution) and ``warnings`` (``band: warning`` joined by `` | ``);
  ``bundle`` (:func:`inclinet.bundle.identity` of the bundle that measured the row);
* per band ``B`` of ``g``, ``r``, ``i``, ``gri``: ``B_<member>`` for every member
  (regression: degrees as ``inclinet-predict`` rounds them; binary: P(reject) in percent),
  ``B_median``, ``B_mean``, ``B_std``, ``B_p_reject``, ``B_peer``, ``B_ood``, ``B_warnings``.

Values a galaxy does not have are empty in the CSV (null in Parquet). The numbers are
``inclinet-predict``'s answers (:func:`inclinet.stages.predict.answer_images`), image by image.
"""

from __future__ import annotations

import csv
import heapq
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from inclinet import naming
from inclinet.errors import ConfigError, InputError
from inclinet.io import atomic_path, atomic_savez

logger = logging.getLogger(__name__)

STATUSES = ("ok", "partial", "failed")
#: Galaxies a measuring job holds at once (all their bands): its memory does not grow with the chunk.
GALAXIES_PER_BATCH = 64
#: Galaxies with the largest ``inc_std`` each chunk keeps for the report's gallery.
GALLERY_SIZE = 12
SUMMARY_COLUMNS = (
    "pgc",
    "status",
    "reason",
    "bands",
    "inc_median",
    "inc_mean",
    "inc_std",
    "p_reject",
    "peer",
    "peer_method",
    "ood",
    "warnings",
    "bundle",
)
BAND_SUMMARY = ("median", "mean", "std", "p_reject", "peer", "ood", "warnings")
TEXT_COLUMNS = {"status", "reason", "bands", "peer_method", "warnings", "bundle"}


def band_columns(band, regression, binary):
    return [f"{band}_{name}" for name in (*regression, *binary, *BAND_SUMMARY)]


def columns(bands, regression, binary):
    """Every column of the catalog, in order, for these bands and member names."""
    names = list(SUMMARY_COLUMNS)
    for band in bands:
        names.extend(band_columns(band, regression, binary))
    return names


def column_kind(name):
    """``int``, ``bool``, ``str`` or ``float``: the type of a catalog column (Parquet's schema)."""
    if name == "pgc":
        return "int"
    if name == "ood" or name.endswith("_ood"):
        return "bool"
    if name in TEXT_COLUMNS or name.endswith("_warnings"):
        return "str"
    return "float"


def member_names(bundle):
    """``(regression, binary)`` member names of a loaded bundle, in the answer's order."""
    regression = [name for _, names in bundle.regression_groups() for name in names]
    return regression, bundle.binary_members()


def parse_bands(text):
    bands = tuple("gri" if b.strip().upper() == "RGB" else b.strip() for b in str(text).split(",") if b.strip())
    if not bands or any(b not in naming.BANDS for b in bands) or len(set(bands)) != len(bands):
        raise ConfigError(
            f"invalid --bands: {text}; must be a comma list without repeats of " + ", ".join(naming.BANDS)
        )
    return bands


# -- measuring one chunk ----------------------------------------------------------------


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _band_values(answer, regression, binary):
    """``{column suffix: value}`` of one band's answer, and its regression values."""
    inclinations = answer["inclinations"]
    values = {}
    degrees = []
    for group, names in inclinations.items():
        if group == "summary":
            continue
        for name, value in names.items():
            values[name] = value
            degrees.append(value)
    summary = inclinations["summary"]
    values.update(median=summary["median"], mean=summary["mean"], std=summary["stdev"])
    rejection = answer.get("rejection_likelihood")
    if rejection:
        for name in binary:
            values[name] = rejection[name]
        values["p_reject"] = rejection["summary"]["median"]
    peer = answer.get("peer")
    values["peer"] = peer["inclination"] if peer else None
    values["ood"] = bool(answer["out_of_distribution"])
    values["warnings"] = "; ".join(answer["warnings"])
    return values, degrees, (peer or {}).get("method")


def galaxy_row(pgc, bands, answers, problems, regression, binary, identity):
    """The catalog row (a dict) of one galaxy from its per-band answers and per-band problems."""
    row = {"pgc": int(pgc), "bundle": identity}
    measured = [band for band in bands if band in answers]
    degrees, rejections, peers, warnings, method = [], [], [], [], None
    for band in measured:
        values, band_degrees, band_method = _band_values(answers[band], regression, binary)
        for key, value in values.items():
            row[f"{band}_{key}"] = value
        degrees.extend(band_degrees)
        rejections.append(values.get("p_reject"))
        peers.append(values["peer"])
        method = method or band_method
        warnings.extend(f"{band}: {w}" for w in answers[band]["warnings"])
    row["status"] = "failed" if not measured else ("ok" if len(measured) == len(bands) else "partial")
    row["reason"] = "; ".join(f"{band}: {problems[band]}" for band in bands if band in problems)
    row["bands"] = ",".join(measured)
    if degrees:
        row.update(
            inc_median=float(statistics.median(degrees)),
            inc_mean=statistics.fmean(degrees),
            inc_std=statistics.pstdev(degrees),
        )
    row["p_reject"] = _median(rejections)
    row["peer"] = _median(peers)
    row["peer_method"] = method
    row["ood"] = any(answers[band]["out_of_distribution"] for band in measured) if measured else None
    row["warnings"] = " | ".join(warnings)
    return row


def _format(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not np.isfinite(value) else repr(value)
    return str(value)


def _load_band(data_path, pgc, band, root, size, source=None):
    """``(image, info, None)`` or ``(None, None, reason)`` for one band of one galaxy.

    ``source`` names where the images came from when ``data_path`` is a temporary folder
    (an unpacked archive): reasons then name the file in ``source``, not the folder.
    """
    from inclinet.catalog import find_raw_image
    from inclinet.normalise import load_normalised

    path = find_raw_image(data_path, pgc, band, root)
    if path is None:
        name = naming.raw_image_names(pgc, band, root)[0]
        if source is not None:
            return None, None, f"missing ({name} not in {source})"
        return None, None, f"missing ({Path(data_path) / name} not found)"
    try:
        image, info = load_normalised(path, size, with_info=True)
    except (InputError, ValueError, OSError) as exc:
        message = str(exc)
        message = message if str(path) in message else f"{path}: {message}"
        if source is not None:
            message = message.replace(str(path), f"{source}: {path.name}")
        return None, None, f"unreadable ({message})"
    return image, info.as_dict(), None


def warning_kind(message):
    """The kind of an out-of-distribution warning (:func:`inclinet.reliability.warning_kind`)."""
    from inclinet import reliability

    return reliability.warning_kind(message)


def warning_summary(counts, galaxies):
    """One line: how many images of how many galaxies were out of distribution, by kind and band."""
    images = counts.get("images", 0)
    if not images:
        return f"out-of-distribution warnings: none ({galaxies} galaxies)"
    kinds = ", ".join(
        f"{kind} {n}" for kind, n in sorted(counts["kinds"].items(), key=lambda item: (-item[1], item[0]))
    )
    bands = ", ".join(f"{band} {n}" for band, n in counts["bands"].items())
    return (
        f"out-of-distribution warnings: {images} images of {counts['galaxies']} of {galaxies} galaxies "
        f"(by kind: {kinds}; images by band: {bands}); per galaxy: the catalog's ood and warnings columns"
    )


def pack(*, pgcs, data_path, archive, bands=naming.BANDS, root=naming.DEFAULT_ROOT):
    """Write the raw images of ``pgcs`` in ``bands`` found under ``data_path`` into the tar file ``archive``.

    Members are the files' names (links followed); images that are missing, or not regular
    files, are left out (the measure job reports them). Member metadata is fixed (time 0,
    owner 0), so the same images always give the same bytes. Returns ``{"images", "missing"}``.
    """
    import tarfile

    from inclinet.catalog import find_raw_image

    def fixed(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
        return info

    counts = {"images": 0, "missing": 0}
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
        for pgc in pgcs:
            for band in bands:
                path = find_raw_image(data_path, pgc, band, root)
                if path is None or not path.is_file():
                    counts["missing"] += 1
                    continue
                tar.add(path, arcname=path.name, recursive=False, filter=fixed)
                counts["images"] += 1
    return counts


def unpack(archive, folder):
    """Extract a :func:`pack` archive into ``folder`` (plain files only, no paths outside it)."""
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "/" not in m.name]
            tar.extractall(folder, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{archive}: not a readable image archive ({exc}); rerun the job that packed it") from None
    return len(members)


def measure(
    *,
    bundle,
    pgcs,
    data_path,
    output,
    gallery=None,
    bands=naming.BANDS,
    root=naming.DEFAULT_ROOT,
    identity=None,
    galaxies_per_batch=GALAXIES_PER_BATCH,
    gallery_size=GALLERY_SIZE,
    source=None,
):
    """Measure the galaxies ``pgcs`` in every band; write their rows to ``output`` (CSV) and return counts.

    Galaxies are read, normalised and predicted ``galaxies_per_batch`` at a time and their
    rows written as they are done (to a temporary file renamed at the end), so memory holds
    one batch whatever the number of galaxies. ``gallery`` (npz) receives the normalised
    images of the ``gallery_size`` galaxies with the largest ``inc_std``. Out-of-distribution
    warnings are not logged image by image: the counts come back under ``"warnings"``
    (:func:`warning_summary` makes them one line); each row holds its galaxy's warnings.
    ``source`` names the images' origin in reasons when ``data_path`` is temporary.
    """
    from inclinet import bundle as model_bundle
    from inclinet.stages.predict import answer_images

    loaded = bundle if isinstance(bundle, model_bundle.Bundle) else model_bundle.Bundle(bundle)
    actual = model_bundle.identity(loaded.directory)
    if identity is not None and identity != actual:
        raise InputError(
            f"{loaded.directory}: bundle identity is {actual}, not {identity} as when the workflow "
            "was built; the bundle changed: build the survey workflow again"
        )
    regression, binary = member_names(loaded)
    header = columns(bands, regression, binary)
    counts = dict.fromkeys(STATUSES, 0)
    warned = {"images": 0, "galaxies": 0, "kinds": {}, "bands": {}}
    kept = []  # heap of (inc_std, -pgc, pgc, image, median, p_reject)
    start = time.perf_counter()
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for first in range(0, len(pgcs), galaxies_per_batch):
            batch = pgcs[first : first + galaxies_per_batch]
            images, infos, owners, problems = [], [], [], {}
            for pgc in batch:
                for band in bands:
                    image, info, problem = _load_band(data_path, pgc, band, root, loaded.input_size, source)
                    if problem is not None:
                        problems.setdefault(pgc, {})[band] = problem
                        continue
                    images.append(image)
                    infos.append(info)
                    owners.append((pgc, band))
            answers = {}
            if images:
                names = [f"pgc {pgc} {band}" for pgc, band in owners]
                for (pgc, band), answer in zip(
                    owners, answer_images(loaded, np.stack(images), infos, names=names, log_warnings=False)
                ):
                    answers.setdefault(pgc, {})[band] = answer
                    if answer["warnings"]:
                        warned["images"] += 1
                        warned["bands"][band] = warned["bands"].get(band, 0) + 1
                        for message in answer["warnings"]:
                            kind = warning_kind(message)
                            warned["kinds"][kind] = warned["kinds"].get(kind, 0) + 1
            for pgc in batch:
                row = galaxy_row(pgc, bands, answers.get(pgc, {}), problems.get(pgc, {}), regression, binary, actual)
                counts[row["status"]] += 1
                warned["galaxies"] += bool(row["ood"])
                writer.writerow([_format(row.get(name)) for name in header])
                if gallery is not None and row.get("inc_std") is not None:
                    shown = "gri" if "gri" in answers[pgc] else row["bands"].split(",")[0]
                    image = images[owners.index((pgc, shown))]
                    entry = (
                        row["inc_std"],
                        -int(pgc),
                        int(pgc),
                        image,
                        row["inc_median"],
                        np.nan if row["p_reject"] is None else row["p_reject"],
                    )
                    if len(kept) < gallery_size:
                        heapq.heappush(kept, entry)
                    elif entry[:2] > kept[0][:2]:
                        heapq.heapreplace(kept, entry)
            done = first + len(batch)
            if done % (galaxies_per_batch * 16) == 0:
                logger.info("measured %d of %d galaxies", done, len(pgcs))
    if gallery is not None:
        kept.sort(key=lambda entry: entry[:2], reverse=True)
        size = loaded.input_size
        atomic_savez(
            gallery,
            images=np.stack([e[3] for e in kept]) if kept else np.zeros((0, size, size, 3), np.uint8),
            pgcIDs=np.array([e[2] for e in kept], dtype=np.int64),
            inc_median=np.array([e[4] for e in kept], dtype=float),
            inc_std=np.array([e[0] for e in kept], dtype=float),
            p_reject=np.array([e[5] for e in kept], dtype=float),
        )
    counts["seconds"] = time.perf_counter() - start
    counts["warnings"] = warned
    return counts


# -- merging ----------------------------------------------------------------------------


def _read_header(path):
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), None)
    except OSError as exc:
        raise InputError(f"{path}: chunk not readable ({exc}); rerun its measure job") from None
    if not header or header[: len(SUMMARY_COLUMNS)] != list(SUMMARY_COLUMNS):
        raise InputError(
            f"{path}: not a survey chunk (header {header[:3] if header else 'missing'}); "
            "give the CSV files inclinet-measure writes"
        )
    return header


def _frame(path, header):
    import pandas as pd

    dtypes = {}
    for name in header:
        kind = column_kind(name)
        dtypes[name] = {"int": "int64", "bool": "boolean", "str": "string", "float": "float64"}[kind]
    frame = pd.read_csv(
        path,
        dtype=dtypes,
        keep_default_na=False,
        na_values={name: [""] for name in header if column_kind(name) != "str"},
        true_values=["true"],
        false_values=["false"],
    )
    for name in header:
        if column_kind(name) == "str":
            frame[name] = frame[name].replace("", pd.NA)
    return frame


def merge(inputs, *, output, parquet=None):
    """Join chunk CSVs (in the given order) into one catalog CSV and, with ``parquet``, a Parquet file.

    Every chunk must have the same columns and every row the same bundle identity;
    otherwise :class:`InputError` names the first file that differs. Chunks are read one
    at a time. Returns ``{"rows", "bundle", "statuses"}``.
    """
    if not inputs:
        raise ConfigError("invalid --inputs: none; must be the chunk CSV files of one survey")
    if parquet is not None:
        try:
            import pandas  # noqa: F401
            import pyarrow
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError(f"--parquet needs pandas and pyarrow ({exc}); install inclinet[survey]") from None
    header = _read_header(inputs[0])
    identity, rows, statuses = None, 0, dict.fromkeys(STATUSES, 0)
    bundle_at = header.index("bundle")
    status_at = header.index("status")
    writer = None
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(header) + "\n")
        for path in inputs:
            if _read_header(path) != header:
                raise InputError(
                    f"{path}: its columns differ from {inputs[0]}'s (other bundle members or bands); "
                    "merge only chunks of one survey run"
                )
            with open(path, encoding="utf-8", newline="") as chunk:
                reader = csv.reader(chunk)
                next(reader)
                for line_no, fields in enumerate(reader, start=2):
                    if len(fields) != len(header):
                        raise InputError(
                            f"{path}, line {line_no}: {len(fields)} fields, not {len(header)}; rerun its measure job"
                        )
                    identity = identity or fields[bundle_at]
                    if fields[bundle_at] != identity:
                        raise InputError(
                            f"{path}, line {line_no}: measured with bundle {fields[bundle_at]}, the "
                            f"chunks before with {identity}; never merge two bundles: rerun the "
                            "survey with one bundle"
                        )
                    statuses[fields[status_at]] = statuses.get(fields[status_at], 0) + 1
                    rows += 1
            with open(path, encoding="utf-8", newline="") as chunk:
                next(chunk)
                for line in chunk:
                    handle.write(line)
        if parquet is not None:
            with atomic_path(parquet) as parquet_tmp:
                for path in inputs:
                    table = pyarrow.Table.from_pandas(_frame(path, header), preserve_index=False)
                    if writer is None:
                        metadata = dict(table.schema.metadata or {})
                        metadata[b"inclinet.bundle"] = str(identity).encode()
                        writer = pq.ParquetWriter(parquet_tmp, table.schema.with_metadata(metadata))
                    writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
                writer.close()
    return {"rows": rows, "bundle": identity, "statuses": statuses}


# -- the summary report -----------------------------------------------------------------


def _agreement(first, second):
    """``{n, median, rms}`` of ``first - second`` where both are measured."""
    both = np.isfinite(first) & np.isfinite(second)
    difference = first[both] - second[both]
    if not difference.size:
        return {"n": 0, "median": None, "rms": None}
    return {
        "n": int(difference.size),
        "median": float(np.median(difference)),
        "rms": float(np.sqrt(np.mean(difference**2))),
    }


def _figure_uri(figure):
    import base64
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def summarize(*, catalog, galleries=(), output, numbers_path=None, gallery_size=GALLERY_SIZE):
    """Write the survey's HTML report (and its numbers as JSON): distributions, agreement, gallery.

    Reads only the columns it needs from ``catalog``; the gallery takes the ``gallery_size``
    galaxies with the largest ``inc_std`` from the chunks' gallery files. Returns the numbers.
    """
    import html

    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib import pyplot as plt

    from inclinet.io import atomic_write_json, atomic_write_text, load_npz

    header = _read_header(catalog)
    bands = [band for band in naming.BANDS if f"{band}_median" in header]
    wanted = [
        "pgc",
        "status",
        "bundle",
        "inc_median",
        "inc_std",
        "p_reject",
        "peer",
        "ood",
        *[f"{band}_median" for band in bands],
    ]
    table = pd.read_csv(
        catalog,
        usecols=wanted,
        dtype={"status": "string", "bundle": "string"},
        keep_default_na=False,
        na_values={n: [""] for n in wanted if n not in ("status", "bundle")},
        true_values=["true"],
        false_values=["false"],
    )
    identities = sorted(set(table["bundle"].dropna()))
    if len(identities) > 1:
        raise InputError(
            f"{catalog}: rows of {len(identities)} bundles ({', '.join(identities)}); "
            "a survey catalog holds one bundle's measurements"
        )
    inclination = table["inc_median"].to_numpy(float)
    rejection = table["p_reject"].to_numpy(float)
    numbers = {
        "catalog": str(catalog),
        "bundle": identities[0] if identities else None,
        "galaxies": len(table),
        "statuses": {status: int((table["status"] == status).sum()) for status in STATUSES},
        "out_of_distribution": int(table["ood"].fillna(False).astype(bool).sum()),
        "inclination": {
            "median": float(np.nanmedian(inclination)) if np.isfinite(inclination).any() else None,
            "histogram": np.histogram(inclination[np.isfinite(inclination)], bins=9, range=(45, 90))[0].tolist(),
        },
        "rejection": {
            "median": float(np.nanmedian(rejection)) if np.isfinite(rejection).any() else None,
            "above_50": int((rejection > 50).sum()),
        },
        "bands_vs_bands": {
            f"{a}-{b}": _agreement(table[f"{a}_median"].to_numpy(float), table[f"{b}_median"].to_numpy(float))
            for i, a in enumerate(bands)
            for b in bands[i + 1 :]
        },
        "ensemble_vs_peer": _agreement(inclination, table["peer"].to_numpy(float)),
    }
    shown = []
    for path in galleries:
        arrays = load_npz(path, required=("images", "pgcIDs", "inc_median", "inc_std", "p_reject"))
        shown.extend(
            zip(arrays["inc_std"], arrays["pgcIDs"], arrays["images"], arrays["inc_median"], arrays["p_reject"])
        )
    shown.sort(key=lambda entry: (-entry[0], entry[1]))
    shown = shown[:gallery_size]
    numbers["most_uncertain"] = [
        {
            "pgc": int(p),
            "inc_std": float(s),
            "inc_median": float(m),
            "p_reject": None if not np.isfinite(r) else float(r),
        }
        for s, p, _, m, r in shown
    ]

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(inclination[np.isfinite(inclination)], bins=18, range=(45, 90), color="tab:blue")
    axes[0].set_xlabel("ensemble median inclination (deg)")
    axes[1].hist(rejection[np.isfinite(rejection)], bins=20, range=(0, 100), color="tab:red")
    axes[1].set_xlabel("rejection likelihood (%)")
    for axis in axes:
        axis.set_ylabel("galaxies")
    figure.tight_layout()
    distributions = _figure_uri(figure)
    plt.close(figure)

    def cell(value):
        return "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))

    rows = "".join(
        f"<tr><td>{html.escape(pair)}</td><td>{v['n']}</td><td>{cell(v['median'])}</td><td>{cell(v['rms'])}</td></tr>"
        for pair, v in [*numbers["bands_vs_bands"].items(), ("ensemble-peer", numbers["ensemble_vs_peer"])]
    )
    gallery_html = ""
    if shown:
        columns_ = min(6, len(shown))
        lines = (len(shown) + columns_ - 1) // columns_
        figure, axes = plt.subplots(lines, columns_, figsize=(1.8 * columns_, 2.6 * lines), squeeze=False)
        for axis in axes.ravel():
            axis.axis("off")
        for axis, (spread, pgc, image, median, reject) in zip(axes.ravel(), shown):
            axis.imshow(image)
            reject_text = "" if not np.isfinite(reject) else f"\nP(rej) {reject:.0f}%"
            axis.set_title(f"pgc {pgc}\n{median:.0f}±{spread:.1f}°{reject_text}", fontsize=7)
        figure.tight_layout()
        gallery_html = f"<h2>Most uncertain galaxies (largest inc_std)</h2><img src='{_figure_uri(figure)}'>"
        plt.close(figure)
    statuses = ", ".join(f"{k} {v}" for k, v in numbers["statuses"].items())
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>inclinet survey</title></head><body>"
        f"<h1>inclinet survey: {numbers['galaxies']} galaxies, bundle {html.escape(str(numbers['bundle']))}</h1>"
        f"<p>Status: {statuses}; out of the training distribution: {numbers['out_of_distribution']}; "
        f"rejection likelihood above 50%: {numbers['rejection']['above_50']}.</p>"
        f"<h2>Distributions</h2><img src='{distributions}'>"
        "<h2>Agreement (first minus second, deg)</h2><table border='1'><tr><th>pair</th><th>n</th>"
        f"<th>median</th><th>rms</th></tr>{rows}</table>{gallery_html}</body></html>\n"
    )
    atomic_write_text(output, page)
    if numbers_path is not None:
        atomic_write_json(numbers_path, numbers)
    return numbers
