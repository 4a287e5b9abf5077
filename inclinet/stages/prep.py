"""Normalise one band of one chunk of the catalog's galaxies into an npz shard (one image at a time).

Each raw image goes through the canonical normalisation
(:func:`inclinet.normalise.normalise_image`: fill masking, polarity, sky, centring and
size from the galaxy's own moments, stretch, noise floor) at the output size and is stored
as ``uint8 (S, S, 3)``; grayscale as three identical channels, alpha dropped. A missing or
unreadable image, or one of the wrong kind for its band, is recorded in the job's report
and the job goes on.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from inclinet import config, naming
from inclinet._helpers import parse_shard, shard_range
from inclinet.catalog import find_raw_image, read_catalog
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import InputError, invalid
from inclinet.images import load_image
from inclinet.io import atomic_path, check_outputs
from inclinet.normalise import normalise_file_image
from inclinet.npzstream import NpzWriter
from inclinet.report import SkipReport

logger = logging.getLogger(__name__)

_LOG_EVERY = 500


def jpeg_name(pgc, size, label, band):
    """The original per-image name: ``pgc<id>_<S>x<S>_<label>.<TAG>.jpg`` (no label: ``pgc<id>_<S>x<S>.<TAG>.jpg``)."""
    middle = f"_{label}" if label not in (None, "") else ""
    return f"pgc{int(pgc)}_{naming.size_tag(size)}{middle}.{naming.band_tag(band)}.jpg"


def prepare(path, band, size):
    """The normalised ``uint8 (size, size, 3)`` image of one raw file, checked against its band.

    Raises :class:`InputError` for an unreadable file or an image of the wrong kind (a
    colour image for a g/r/i band, a grayscale one for gri).
    """
    image = load_image(path)
    gray = bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))
    if band in naming.GRAY_BANDS and not gray:
        raise InputError(f"{path}: colour image for the grayscale band {band}; expected a one-channel image")
    if band == "gri" and gray:
        raise InputError(f"{path}: grayscale image for the colour band gri; expected an RGB composite")
    return normalise_file_image(image, size, path)


def run(
    *,
    data_dir,
    catalog,
    band,
    size=config.DEFAULTS.size,
    output,
    root=naming.DEFAULT_ROOT,
    shard=None,
    report=None,
    jpeg_dir=None,
):
    """Resize the images of catalog rows ``shard`` (``(I, K)``, default all) of ``band`` into ``output``.

    Returns a summary dict. Rows are the catalog rows in file order; shard I of K takes
    :func:`inclinet._helpers.shard_range`, so concatenating the shards' outputs gives the
    unsharded output. Writes the skip report (default ``OUT.report.csv``) and, with
    ``jpeg_dir``, one JPEG per galaxy under the original naming.
    """
    start = time.perf_counter()
    if band not in naming.BANDS:
        raise invalid("--band", band, "one of " + ", ".join(naming.BANDS))
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise invalid("--size", size, "a positive number of pixels (e.g. 128, 64 or 32)")
    size = int(size)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: image folder not found; pass the folder of the raw images with -p")
    index, count = shard if shard is not None else (1, 1)
    galaxies = read_catalog(catalog)
    rows = shard_range(len(galaxies), index, count)
    output = Path(output)
    report_path = Path(report) if report else Path(naming.report_for(output))
    jpeg_dir = Path(jpeg_dir) if jpeg_dir else None
    if jpeg_dir:
        jpeg_dir.mkdir(parents=True, exist_ok=True)
    skips = SkipReport("prep")

    labels, pgcs = [], []
    with NpzWriter(output, (size, size, 3)) as writer:
        for done, row in enumerate(rows, start=1):
            galaxy = galaxies[row]
            try:
                path = find_raw_image(data_dir, galaxy.pgc, band, root)
            except ValueError as exc:
                raise invalid("--root", root, f"a plain file-name part ({exc})") from None
            if path is None:
                skips.skip(
                    galaxy.pgc,
                    f"no {band} image under {data_dir}",
                    band=band,
                    file=naming.raw_image_names(galaxy.pgc, band, root)[0],
                )
                continue
            try:
                image = prepare(path, band, size)
            except InputError as exc:
                skips.skip(galaxy.pgc, str(exc), band=band, file=path)
                continue
            writer.append(image)
            labels.append(galaxy.numeric_class)
            pgcs.append(galaxy.pgc)
            if jpeg_dir:
                _write_jpeg(jpeg_dir / jpeg_name(galaxy.pgc, size, galaxy.label, band), image, band)
            if done % _LOG_EVERY == 0:
                logger.info("prep %s: %d/%d rows", band, done, len(rows))
        writer.set(
            labels=np.asarray(labels, dtype=np.int32), pgcIDs=np.asarray(pgcs, dtype=np.int32), band=np.array(band)
        )
    skips.write(report_path)
    check_outputs([output, report_path])
    summary = {
        "band": band,
        "size": size,
        "shard": f"{index}/{count}",
        "rows": len(rows),
        "images": len(pgcs),
        "skipped": len(skips),
        "seconds": round(time.perf_counter() - start, 2),
    }
    logger.info(
        "prep %s shard %d/%d: %d rows -> %d images at %d px, %d skipped, %.1f s -> %s",
        band,
        index,
        count,
        len(rows),
        len(pgcs),
        size,
        len(skips),
        summary["seconds"],
        output,
    )
    return summary


def _write_jpeg(path, image, band):
    picture = Image.fromarray(image[..., 0] if band in naming.GRAY_BANDS else image)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="JPEG")


def add_arguments(parser):
    parser.add_argument("-p", "--data-path", required=True, metavar="DATA_DIR", help="folder of the raw images")
    parser.add_argument("-c", "--catalog", required=True, help="galaxy catalog (pipe-separated or CSV)")
    parser.add_argument("-b", "--band", required=True, choices=naming.BANDS, help="band: g, r, i or gri (colour)")
    config.add_argument(parser, "size", "-s", help="output image size in pixels")
    parser.add_argument(
        "-r",
        "--root",
        default=naming.DEFAULT_ROOT,
        help=f"raw file name root, pgc<id>_<root>_<band> (default {naming.DEFAULT_ROOT})",
    )
    parser.add_argument("--shard", default=None, metavar="I/K", help="process catalog rows of shard I of K only")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.npz",
        help="output shard (resized/<S>x<S>_<TAG>/part<iiii>of<kkkk>.npz)",
    )
    parser.add_argument("--report", default=None, help="skip report CSV (default: OUT.report.csv)")
    parser.add_argument(
        "--jpeg-dir",
        default=None,
        metavar="DIR",
        help="also write one JPEG per galaxy there (pgc<id>_<S>x<S>_<label>.<TAG>.jpg)",
    )
    add_common_arguments(parser)  # --seed accepted for uniform job lines; this stage draws no random numbers
    return parser


def build_parser():
    return add_arguments(
        argparse.ArgumentParser(
            prog="inclinet-prep", description="Resize one band of (a shard of) the catalog's galaxies into an npz."
        )
    )


def main(argv=None):
    parser = build_parser()

    def _run(args):
        shard = parse_shard(args.shard) if args.shard else None
        run(
            data_dir=args.data_path,
            catalog=args.catalog,
            band=args.band,
            size=args.size,
            output=args.output,
            root=args.root,
            shard=shard,
            report=args.report,
            jpeg_dir=args.jpeg_dir,
        )

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
