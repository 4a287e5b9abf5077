"""Merge one band's prep shards into ``compressed/<S>x<S>_<TAG>.npz``, rows sorted by pgc, streaming."""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from inclinet import naming
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import InputError, invalid
from inclinet.io import check_outputs
from inclinet.npzstream import NpzRows, NpzWriter, array_info, load_arrays
from inclinet.report import SkipReport

logger = logging.getLogger(__name__)

#: Numeric classes a compressed file may hold: 0 (J), 1 (F) or an inclination in degrees.
MIN_CLASS, MAX_CLASS = 0, 90


def read_part_header(path):
    """``(band, labels, pgcIDs, image_shape)`` of a prep shard, without reading its images."""
    arrays = load_arrays(path, ("labels", "pgcIDs", "band"))
    shape, dtype = array_info(path)
    band = str(arrays["band"])
    labels = arrays["labels"].reshape(-1)
    pgcs = arrays["pgcIDs"].reshape(-1)
    if band not in naming.BANDS:
        raise InputError(f"{path}: unknown band {band!r}; must be one of {', '.join(naming.BANDS)}")
    if dtype != np.uint8 or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise InputError(f"{path}: images are {dtype} {shape}, expected uint8 (N, S, S, 3); re-run inclinet-prep")
    if not (len(labels) == len(pgcs) == shape[0]):
        raise InputError(f"{path}: {shape[0]} images but {len(labels)} labels and {len(pgcs)} pgc ids")
    return band, labels, pgcs, shape


def run(*, inputs, output, report=None, size=None, scratch_dir=None):
    """Merge prep shards ``inputs`` of one band into ``output``; returns a summary dict.

    Every part must hold the same band and image size (and match ``size`` if given).
    Rows are sorted by pgc; a pgc seen twice is kept once (first occurrence, in input
    order) and the repeat is recorded in the report, as is any label outside 0..90.
    Memory holds one chunk of rows at a time, whatever the number of galaxies.
    """
    start = time.perf_counter()
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise invalid("--input", [], "at least one prep part (.npz)")
    output = Path(output)
    report_path = Path(report) if report else Path(naming.report_for(output))
    skips = SkipReport("compress")

    headers = [read_part_header(path) for path in inputs]
    bands = {h[0] for h in headers}
    if len(bands) > 1:
        detail = ", ".join(f"{p.name}: {h[0]}" for p, h in zip(inputs, headers))
        raise InputError(f"parts of different bands given to one compress job ({detail}); merge one band at a time")
    band = bands.pop()
    sides = {h[3][1] for h in headers}
    if len(sides) > 1 or (size is not None and sides != {int(size)}):
        detail = ", ".join(f"{p.name}: {h[3][1]} px" for p, h in zip(inputs, headers))
        expected = f"all {size} px" if size is not None else "one size"
        raise InputError(f"parts of band {band} have image sizes {detail}; expected {expected}; re-run inclinet-prep")
    side = sides.pop()

    # Which rows to keep, and where each goes in the pgc-sorted output.
    keep_part, keep_row, keep_pgc, keep_label = [], [], [], []
    seen = {}
    for part_index, (path, (_, labels, pgcs, _)) in enumerate(zip(inputs, headers)):
        for row, (pgc, label) in enumerate(zip(pgcs.tolist(), labels.tolist())):
            if not MIN_CLASS <= label <= MAX_CLASS:
                skips.skip(pgc, f"label {label} out of range {MIN_CLASS}..{MAX_CLASS}", band=band, file=path)
                continue
            if pgc in seen:
                skips.skip(pgc, f"duplicate pgc (already in {seen[pgc].name}); kept the first", band=band, file=path)
                continue
            seen[pgc] = path
            keep_part.append(part_index)
            keep_row.append(row)
            keep_pgc.append(pgc)
            keep_label.append(label)
    if not keep_pgc:
        raise InputError(
            f"band {band}: no usable galaxies in {len(inputs)} part(s) ({', '.join(p.name for p in inputs)}); "
            "check the prep reports and the catalog"
        )
    order = np.argsort(np.asarray(keep_pgc, dtype=np.int64), kind="stable")
    keep_part = np.asarray(keep_part)[order]
    keep_row = np.asarray(keep_row)[order]
    pgc_sorted = np.asarray(keep_pgc, dtype=np.int32)[order]
    label_sorted = np.asarray(keep_label, dtype=np.int32)[order]

    # Stream: one part's images at a time are unpacked (into a scratch file) and their kept
    # rows are written in output order, so memory never holds the merged set.
    positions_by_part = {}
    for position, part_index in enumerate(keep_part.tolist()):
        positions_by_part.setdefault(part_index, []).append(position)
    n_out = len(pgc_sorted)
    scratch = Path(scratch_dir) if scratch_dir else output.parent
    scratch.mkdir(parents=True, exist_ok=True)
    with _OrderedRowSink(output, (side, side, 3), n_out, scratch) as sink:
        for part_index, positions in positions_by_part.items():
            with NpzRows(inputs[part_index], scratch_dir=scratch) as rows:
                for position in positions:
                    sink.put(position, rows.read([keep_row[position]])[0])
        sink.set(labels=label_sorted, pgcIDs=pgc_sorted, band=np.array(band))
    skips.write(report_path)
    check_outputs([output, report_path])
    summary = {
        "band": band,
        "size": side,
        "parts": len(inputs),
        "galaxies": n_out,
        "skipped": len(skips),
        "seconds": round(time.perf_counter() - start, 2),
    }
    logger.info(
        "compress: band %s, %d part(s) -> %d galaxies at %d px, %d skipped, %.1f s -> %s",
        band,
        len(inputs),
        n_out,
        side,
        len(skips),
        summary["seconds"],
        output,
    )
    return summary


class _OrderedRowSink:
    """Rows arrive in any order with their final position; written to ``output`` in order.

    Rows are first put into a raw scratch file at their position (random writes), then
    copied in chunks into the npz, so memory stays at one chunk.
    """

    def __init__(self, output, row_shape, n_rows, scratch_dir):
        self.output = output
        self.row_shape = row_shape
        self.n_rows = n_rows
        self.scratch_dir = scratch_dir
        self.row_bytes = int(np.prod(row_shape))
        self.arrays = {}

    def __enter__(self):
        fd, name = tempfile.mkstemp(prefix=".compress-", suffix=".raw", dir=self.scratch_dir)
        os.unlink(name)
        self.fd = fd
        self.filled = np.zeros(self.n_rows, dtype=bool)
        return self

    def put(self, position, image):
        os.pwrite(self.fd, np.ascontiguousarray(image, dtype=np.uint8).tobytes(), position * self.row_bytes)
        self.filled[position] = True

    def set(self, **arrays):
        self.arrays.update(arrays)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if not self.filled.all():
                    raise InputError(f"{self.output}: internal error, {int((~self.filled).sum())} rows not filled")
                chunk_rows = max(1, (4 << 20) // self.row_bytes)
                with NpzWriter(self.output, self.row_shape, n_rows=self.n_rows) as writer:
                    for start in range(0, self.n_rows, chunk_rows):
                        count = min(chunk_rows, self.n_rows - start)
                        data = os.pread(self.fd, count * self.row_bytes, start * self.row_bytes)
                        writer.append(np.frombuffer(data, dtype=np.uint8).reshape(count, *self.row_shape))
                    writer.set(**self.arrays)
        finally:
            os.close(self.fd)
        return False


def add_arguments(parser):
    parser.add_argument(
        "-i",
        "--input",
        nargs="+",
        required=True,
        metavar="PART.npz",
        help="prep parts of one band (resized/<S>x<S>_<TAG>/partIIIIofKKKK.npz)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="compressed/<S>x<S>_<TAG>.npz")
    parser.add_argument(
        "-s",
        "--size",
        type=int,
        default=None,
        help="expected image size in pixels (checked against the parts; default: any, but equal)",
    )
    parser.add_argument("--report", default=None, help="skip report CSV (default: OUT.report.csv)")
    add_common_arguments(parser)  # --seed accepted for uniform job lines; this stage draws no random numbers
    return parser


def build_parser():
    return add_arguments(
        argparse.ArgumentParser(
            prog="inclinet-compress", description="Merge one band's prep parts into one npz sorted by pgc."
        )
    )


def main(argv=None):
    parser = build_parser()

    def _run(args):
        if args.size is not None and args.size < 1:
            raise invalid("--size", args.size, "a positive number of pixels")
        run(inputs=args.input, output=args.output, report=args.report, size=args.size)

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
