"""inclinet-measure: one chunk of a survey catalog through a model bundle, every band, in bounded memory.

The job of the survey workflow (``run_workflow.py --predict-with BUNDLE``): reads catalog
rows ``--shard I/K``, measures each galaxy in every ``--bands`` band with
:func:`inclinet.stages.predict.answer_images` (``inclinet-predict``'s normalisation, members,
peer and out-of-distribution checks) and writes one CSV row per galaxy (columns:
:mod:`inclinet.survey`), plus the chunk's most uncertain galaxies for the report's gallery.
A galaxy with missing or unreadable bands is measured from the others and says so.
Out-of-distribution warnings are counted, not logged image by image: one line per job
gives them by kind and band; every row keeps its galaxy's warnings.

Two modes serve Pegasus, which stages files, not folders: ``--pack ARCHIVE`` (on the
submit host) writes the images of the rows into one tar file and measures nothing;
``--archive ARCHIVE`` (on the compute node) reads the images from that file instead of
``--data-path``.
"""

import argparse
import logging
import sys
import tempfile
import time

from inclinet import naming, survey
from inclinet._helpers import parse_shard, shard_range
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import ConfigError, invalid
from inclinet.io import check_outputs

logger = logging.getLogger(__name__)


def _rows(catalog, shard):
    from inclinet.catalog import read_catalog

    pgcs = [int(galaxy.pgc) for galaxy in read_catalog(catalog)]
    if shard is not None:
        pgcs = [pgcs[row] for row in shard_range(len(pgcs), *shard)]
    return pgcs


def run(
    *,
    bundle,
    catalog,
    data_path=None,
    output,
    gallery=None,
    bands=naming.BANDS,
    root=naming.DEFAULT_ROOT,
    shard=None,
    identity=None,
    galaxies_per_batch=survey.GALAXIES_PER_BATCH,
    archive=None,
):
    """Measure the galaxies of ``shard`` (``(I, K)``, all rows without) of ``catalog``; returns the counts.

    The images are read from ``data_path``, or from ``archive`` (a :func:`pack` tar file),
    unpacked into a temporary folder that is removed afterwards.
    """
    start = time.perf_counter()
    if galaxies_per_batch < 1:
        raise invalid("--galaxies-per-batch", galaxies_per_batch, "an integer >= 1")
    if (data_path is None) == (archive is None):
        raise ConfigError("give the images' folder (--data-path) or their archive (--archive), one of the two")
    pgcs = _rows(catalog, shard)
    options = dict(
        bundle=bundle,
        pgcs=pgcs,
        output=output,
        gallery=gallery,
        bands=tuple(bands),
        root=root,
        identity=identity,
        galaxies_per_batch=galaxies_per_batch,
    )
    if archive is None:
        counts = survey.measure(data_path=data_path, **options)
    else:
        with tempfile.TemporaryDirectory(prefix="inclinet-measure-") as folder:
            unpacked = survey.unpack(archive, folder)
            logger.info("measure: %d images unpacked from %s", unpacked, archive)
            counts = survey.measure(data_path=folder, source=str(archive), **options)
    check_outputs([output] + ([gallery] if gallery else []))
    seconds = time.perf_counter() - start
    logger.info(
        "measure: %d galaxies (%d ok, %d partial, %d failed), %d band(s), %.1f s, %.2f galaxies/s",
        len(pgcs),
        counts["ok"],
        counts["partial"],
        counts["failed"],
        len(bands),
        seconds,
        len(pgcs) / seconds if seconds else 0.0,
    )
    logger.info("measure: %s", survey.warning_summary(counts["warnings"], len(pgcs)))
    return counts


def pack(*, catalog, data_path, archive, bands=naming.BANDS, root=naming.DEFAULT_ROOT, shard=None):
    """Write the images of the rows of ``catalog`` (``shard`` of it) into the tar file ``archive``."""
    pgcs = _rows(catalog, shard)
    counts = survey.pack(pgcs=pgcs, data_path=data_path, archive=archive, bands=tuple(bands), root=root)
    check_outputs([archive])
    logger.info(
        "pack: %d images of %d galaxies into %s (%d missing or not regular files: the measure job reports them)",
        counts["images"],
        len(pgcs),
        archive,
        counts["missing"],
    )
    return counts


def add_arguments(parser):
    parser.add_argument(
        "--bundle", metavar="DIR", help="model bundle (manifest.json + members); required but with --pack"
    )
    parser.add_argument(
        "--bundle-id",
        default=None,
        metavar="ID",
        help="refuse a bundle whose identity (inclinet.bundle.identity) is not ID",
    )
    parser.add_argument("-c", "--catalog", required=True, help="galaxy catalog (pipe-separated or CSV)")
    parser.add_argument("-p", "--data-path", metavar="DATA_DIR", help="folder of the raw images (or give --archive)")
    parser.add_argument(
        "--archive",
        metavar="IMAGES.tar",
        help="read the raw images from this tar file (written by --pack) instead of --data-path",
    )
    parser.add_argument(
        "--pack",
        metavar="IMAGES.tar",
        help="only write the raw images of the rows (from --data-path) into this tar file",
    )
    parser.add_argument(
        "-r",
        "--root",
        default=naming.DEFAULT_ROOT,
        help=f"raw file name root, pgc<id>_<root>_<band> (default {naming.DEFAULT_ROOT})",
    )
    parser.add_argument(
        "--bands",
        default=",".join(naming.BANDS),
        type=survey.parse_bands,
        help="comma list of g,r,i,gri (default all four)",
    )
    parser.add_argument("--shard", default=None, metavar="I/K", help="catalog rows of shard I of K only")
    parser.add_argument(
        "--galaxies-per-batch",
        type=int,
        default=survey.GALAXIES_PER_BATCH,
        metavar="N",
        help=f"galaxies held in memory at once, all bands (default {survey.GALAXIES_PER_BATCH})",
    )
    parser.add_argument(
        "-o", "--output", metavar="CHUNK.csv", help="the chunk's catalog rows; required but with --pack"
    )
    parser.add_argument(
        "--gallery",
        default=None,
        metavar="GALLERY.npz",
        help=f"the chunk's {survey.GALLERY_SIZE} most uncertain galaxies (normalised images)",
    )
    add_common_arguments(parser, seed=False)
    return parser


def build_parser():
    return add_arguments(argparse.ArgumentParser(prog="inclinet-measure", description=__doc__.splitlines()[0]))


def main(argv=None):
    parser = build_parser()

    def _run(args):
        shard = parse_shard(args.shard) if args.shard else None
        if args.pack is not None:
            if args.data_path is None or args.archive is not None:
                raise ConfigError(
                    "invalid --pack: it reads the images from --data-path; give --data-path, not --archive"
                )
            pack(
                catalog=args.catalog,
                data_path=args.data_path,
                archive=args.pack,
                bands=args.bands,
                root=args.root,
                shard=shard,
            )
            return
        for flag, value in (("--bundle", args.bundle), ("--output", args.output)):
            if value is None:
                raise ConfigError(f"invalid {flag}: missing; must be given to measure (all but --pack)")
        run(
            bundle=args.bundle,
            catalog=args.catalog,
            data_path=args.data_path,
            output=args.output,
            gallery=args.gallery,
            bands=args.bands,
            root=args.root,
            shard=shard,
            identity=args.bundle_id,
            galaxies_per_batch=args.galaxies_per_batch,
            archive=args.archive,
        )

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
