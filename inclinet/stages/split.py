"""Split galaxies into test/train subsets once, by pgc, and apply the same split to every band.

Regression task: galaxies with inclination 45..90; ``test_000`` holds ``--test-fraction``
of them, ``train_000`` the rest, ``train_001..m`` random 2/3 subsamples of ``train_000``.
Binary (accept/reject) task: its own split over all galaxies, stratified by class
(numeric inclination, F, J). The split is drawn over the union of the pgc ids of all
bands, so a galaxy is on the same side in every band it appears in (the original split
one band and leaked test galaxies into the others' subsets). Galaxies present in some
bands but not others, and galaxies whose label differs between bands, are reported.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from inclinet import config, naming
from inclinet._helpers import rng_for
from inclinet.catalog import OUT_OF_RANGE, binary_label
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import InputError, invalid
from inclinet.io import atomic_write_json, check_outputs
from inclinet.npzstream import NpzRows, NpzWriter, read_band_file
from inclinet.report import SkipReport

logger = logging.getLogger(__name__)

MIN_INCLINATION, MAX_INCLINATION = 45, 90
CLASS_J, CLASS_F = 0, 1
_CHUNK_ROWS = 256


def _stratum(numeric_class):
    if numeric_class == CLASS_J:
        return "J"
    if numeric_class == CLASS_F:
        return "F"
    return "numeric"


def _n_test(n_items, fraction):
    """Test count: the rounded fraction, but at least one of each side when there are two or more."""
    if n_items < 2:
        return 0
    return min(n_items - 1, max(1, int(round(fraction * n_items))))


def draw_split(labels_by_pgc, *, seed, test_fraction=0.1, binary_test_fraction=0.1, n_subsamples=3):
    """The split as sorted pgc lists: ``{"test_000", "train_000".."train_00m", "binary_train", "binary_test"}``.

    ``labels_by_pgc`` maps pgc -> numeric class. Deterministic from ``seed`` and the set
    of (pgc, class) pairs, whatever the input order.
    """
    pgcs = np.array(sorted(labels_by_pgc), dtype=np.int64)
    classes = np.array([labels_by_pgc[p] for p in pgcs.tolist()], dtype=np.int64)
    regression = pgcs[(classes >= MIN_INCLINATION) & (classes <= MAX_INCLINATION)]
    subsets = {}
    rng = rng_for(seed, "split", "regression")
    permuted = rng.permutation(regression)
    n_test = _n_test(len(regression), test_fraction)
    subsets["test_000"] = sorted(permuted[:n_test].tolist())
    train = np.array(sorted(permuted[n_test:].tolist()), dtype=np.int64)
    subsets["train_000"] = train.tolist()
    for k in range(1, n_subsamples + 1):
        sub_rng = rng_for(seed, "split", "subsample", k)
        n_keep = (2 * len(train)) // 3
        subsets[f"train_{k:03d}"] = sorted(sub_rng.permutation(train)[:n_keep].tolist())

    binary_test = []
    for stratum in ("numeric", "F", "J"):
        members = np.array(
            [p for p, c in zip(pgcs.tolist(), classes.tolist()) if _stratum(c) == stratum], dtype=np.int64
        )
        stratum_rng = rng_for(seed, "split", "binary", stratum)
        binary_test += stratum_rng.permutation(members)[: _n_test(len(members), binary_test_fraction)].tolist()
    binary_test_set = set(binary_test)
    subsets["binary_test"] = sorted(binary_test_set)
    subsets["binary_train"] = [p for p in pgcs.tolist() if p not in binary_test_set]
    return subsets


def _label_reason(label):
    """``(reason, usable)`` for a numeric class: reason None for J (0), F (1) and 45..90.

    Never relabels: an accepted galaxy with an impossible inclination is not made a reject.
    An accepted galaxy with inclination 10..44 stays an accept for the binary task
    (``usable``) and is reported as left out of regression.
    """
    if label in (CLASS_J, CLASS_F) or MIN_INCLINATION <= label <= MAX_INCLINATION:
        return None, True
    if label == OUT_OF_RANGE:
        return (
            "accepted catalog row (inc_flg 0) whose inc is below 10 or above 90 (see the catalog); "
            "left out of both tasks: fix inc or flag the row"
        ), False
    if 10 <= label < MIN_INCLINATION:
        return (
            f"accepted galaxy with inclination {label}, below {MIN_INCLINATION}: an accept for the binary "
            "task, left out of regression"
        ), True
    if 1 < label < 10:
        return (
            f"accepted galaxy with inclination {label}: not an inclination the tasks can use and not a "
            "reject; left out of both tasks: fix inc or flag the row in the catalog"
        ), False
    return f"label {label} is not 0 (J), 1 (F) or an inclination 10..{MAX_INCLINATION}; left out", False


def _read_band(path, size):
    band, labels, pgcs, n_rows = read_band_file(path, size, hint="re-run inclinet-prep/compress at this size")
    if n_rows == 0:
        raise InputError(f"{path}: band {band} has no galaxies; check the prep and compress reports")
    return band, labels, pgcs


def _check_arguments(inputs, size, n_subsamples, test_fraction, binary_test_fraction):
    if not inputs:
        raise invalid("--input", [], "one compressed npz per band")
    if not 0 < test_fraction < 1:
        raise invalid("--test-fraction", test_fraction, "a number between 0 and 1 (exclusive)")
    if not 0 < binary_test_fraction < 1:
        raise invalid("--binary-test-fraction", binary_test_fraction, "a number between 0 and 1 (exclusive)")
    if n_subsamples < 0:
        raise invalid("--n-subsamples", n_subsamples, "a non-negative integer")
    if size < 1:
        raise invalid("--size", size, "a positive number of pixels")


def _read_bands(inputs, size):
    """``{band: {"path", "labels", "pgcs"}}`` of the compressed files, one per band."""
    bands = {}
    for path in map(Path, inputs):
        band, labels, pgcs = _read_band(path, size)
        if band in bands:
            raise InputError(f"band {band} given twice ({bands[band]['path']} and {path}); give one file per band")
        bands[band] = {"path": path, "labels": labels, "pgcs": pgcs}
    return bands


def _labels_over_bands(bands, skips):
    """One label per galaxy over all bands: ``(labels_by_pgc, left_out)``.

    Conflicting, out-of-range or repeated rows are left out (and reported in ``skips``).
    """
    labels_by_pgc, conflicts, label_noted = {}, set(), set()
    for band, info in bands.items():
        seen = set()
        for pgc, label in zip(info["pgcs"].tolist(), info["labels"].tolist()):
            if pgc in seen:
                skips.skip(pgc, "pgc appears twice in the band; the galaxy is left out", band=band, file=info["path"])
                conflicts.add(pgc)
                continue
            seen.add(pgc)
            reason, usable = _label_reason(label)
            if reason and pgc not in label_noted:  # a catalog fact: once per galaxy, not per band
                skips.skip(pgc, reason, band=band, file=info["path"])
                label_noted.add(pgc)
            if not usable:
                conflicts.add(pgc)
                continue
            if pgc in labels_by_pgc and labels_by_pgc[pgc] != label:
                skips.skip(
                    pgc,
                    f"label {label} differs from {labels_by_pgc[pgc]} in another band; left out",
                    band=band,
                    file=info["path"],
                )
                conflicts.add(pgc)
            labels_by_pgc.setdefault(pgc, label)
    for pgc in conflicts:
        labels_by_pgc.pop(pgc, None)
    return labels_by_pgc, conflicts


def _missing_per_band(bands, labels_by_pgc, skips):
    """``{band tag: [pgc]}``: the galaxies of the split that a band lacks (reported in ``skips``)."""
    missing = {}
    all_pgcs = set(labels_by_pgc)
    for band, info in bands.items():
        absent = sorted(all_pgcs - set(info["pgcs"].tolist()))
        missing[naming.band_tag(band)] = absent
        for pgc in absent:
            skips.skip(pgc, "missing from this band (present in another); split consistently, absent here", band=band)
    return missing


def _write_band_subsets(band, info, subsets, *, size, output_dir, scratch):
    """Write every subset file of one band; return ``({subset: rows}, [paths])``."""
    counts, paths = {}, []
    row_of = {pgc: row for row, pgc in enumerate(info["pgcs"].tolist())}
    with NpzRows(info["path"], scratch_dir=scratch) as rows:
        for name, members in subsets.items():
            kind, index = _kind_index(name)
            path = output_dir / Path(naming.sample(size, band, kind, index)).name
            picked = np.array([row_of[p] for p in members if p in row_of], dtype=np.int64)
            labels = info["labels"][picked]
            if kind.startswith("binary"):
                labels = np.array([binary_label(c) for c in labels.tolist()], dtype=np.int64)
            with NpzWriter(path, (size, size, 3), n_rows=len(picked)) as writer:
                for start_row in range(0, len(picked), _CHUNK_ROWS):
                    writer.append(rows.read(picked[start_row : start_row + _CHUNK_ROWS]))
                writer.set(
                    labels=labels.astype(np.int32), pgcIDs=info["pgcs"][picked].astype(np.int32), band=np.array(band)
                )
            counts[name] = int(len(picked))
            paths.append(path)
    return counts, paths


def run(
    *,
    inputs,
    output_dir,
    size,
    n_subsamples=config.DEFAULTS.subsamples,
    test_fraction=config.DEFAULTS.test_fraction,
    binary_test_fraction=config.DEFAULTS.binary_test_fraction,
    seed=config.DEFAULTS.seed,
    scratch_dir=None,
):
    """Split the compressed bands ``inputs`` into ``output_dir``; returns the summary dict.

    Writes, for every band, the files of :func:`inclinet.naming.sample` (``test_000``,
    ``train_000..train_00m``, ``binary_train``, ``binary_test``), the summary JSON
    (:func:`inclinet.naming.split_summary`) with the pgc ids of every subset, and its
    report CSV (galaxies missing from a band, conflicting or out-of-range labels).
    """
    start = time.perf_counter()
    _check_arguments(inputs, size, n_subsamples, test_fraction, binary_test_fraction)
    output_dir = Path(output_dir)
    summary_path = output_dir / Path(naming.split_summary(size)).name
    report_path = output_dir / Path(naming.split_report(size)).name
    skips = SkipReport("split")

    bands = _read_bands(inputs, size)
    labels_by_pgc, conflicts = _labels_over_bands(bands, skips)
    missing = _missing_per_band(bands, labels_by_pgc, skips)
    subsets = draw_split(
        labels_by_pgc,
        seed=seed,
        test_fraction=test_fraction,
        binary_test_fraction=binary_test_fraction,
        n_subsamples=n_subsamples,
    )
    if not subsets["train_000"]:
        raise InputError(
            f"no galaxies with inclination {MIN_INCLINATION}..{MAX_INCLINATION} to train on in "
            f"{', '.join(str(i['path']) for i in bands.values())}; the regression task needs labelled galaxies"
        )

    outputs = [summary_path, report_path]
    counts = {}
    scratch = Path(scratch_dir) if scratch_dir else output_dir
    scratch.mkdir(parents=True, exist_ok=True)
    for band, info in bands.items():
        counts[naming.band_tag(band)], paths = _write_band_subsets(
            band, info, subsets, size=size, output_dir=output_dir, scratch=scratch
        )
        outputs += paths

    summary = {
        "size": int(size),
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "binary_test_fraction": float(binary_test_fraction),
        "n_subsamples": int(n_subsamples),
        "bands": {naming.band_tag(b): str(info["path"]) for b, info in bands.items()},
        "counts": counts,
        "missing": missing,
        "excluded": sorted(conflicts),
        "subsets": subsets,
    }
    atomic_write_json(summary_path, summary)
    skips.write(report_path)
    check_outputs(outputs)
    logger.info(
        "split: %d galaxies over %d band(s): test %d, train %d, %d subsample(s); binary train %d, test %d; "
        "%d report row(s); seed %d; %.1f s",
        len(labels_by_pgc),
        len(bands),
        len(subsets["test_000"]),
        len(subsets["train_000"]),
        n_subsamples,
        len(subsets["binary_train"]),
        len(subsets["binary_test"]),
        len(skips),
        seed,
        time.perf_counter() - start,
    )
    return summary


def _kind_index(name):
    if name.startswith("binary"):
        return name, 0
    kind, index = name.rsplit("_", 1)
    return kind, int(index)


def add_arguments(parser):
    parser.add_argument(
        "-i",
        "--input",
        nargs="+",
        required=True,
        metavar="COMPRESSED.npz",
        help="compressed npz of every band (compressed/<S>x<S>_<TAG>.npz)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="SAMPLES_DIR", help="folder of the sample files")
    config.add_argument(parser, "size", "-s", required=True, help="image size in pixels (checked)")
    config.add_argument(
        parser,
        "subsamples",
        "-n",
        flag="--n-subsamples",
        metavar="N_SUBSAMPLES",
        help="number of 2/3 training subsamples train_001..train_00m",
    )
    config.add_argument(parser, "test_fraction")
    config.add_argument(parser, "binary_test_fraction")
    add_common_arguments(parser)
    return parser


def build_parser():
    return add_arguments(
        argparse.ArgumentParser(
            prog="inclinet-split", description="Split galaxies into test/train subsets, identically in every band."
        )
    )


def main(argv=None):
    parser = build_parser()

    def _run(args):
        run(
            inputs=args.input,
            output_dir=args.output,
            size=args.size,
            n_subsamples=args.subsamples,
            test_fraction=args.test_fraction,
            binary_test_fraction=args.binary_test_fraction,
            seed=args.seed,
        )

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
