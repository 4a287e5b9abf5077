"""inclinet-measure: one chunk of a survey catalog through a model bundle, every band, in bounded memory.

The job of the survey workflow (``run_workflow.py --predict-with BUNDLE``): reads catalog
rows ``--shard I/K``, measures each galaxy in every ``--bands`` band with
:func:`inclinet.stages.predict.answer_images` (``inclinet-predict``'s normalisation, members,
peer and out-of-distribution checks) and writes one CSV row per galaxy (columns:
:mod:`inclinet.survey`), plus the chunk's most uncertain galaxies for the report's gallery.
A galaxy with missing or unreadable bands is measured from the others and says so.
"""

import argparse
import logging
import sys
import time

from inclinet import naming, survey
from inclinet._helpers import parse_shard, shard_range
from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import invalid
from inclinet.io import check_outputs

logger = logging.getLogger(__name__)


def run(*, bundle, catalog, data_path, output, gallery=None, bands=naming.BANDS, root=naming.DEFAULT_ROOT,
        shard=None, identity=None, galaxies_per_batch=survey.GALAXIES_PER_BATCH):
    """Measure the galaxies of ``shard`` (``(I, K)``, all rows without) of ``catalog``; returns the counts."""
    from inclinet.catalog import read_catalog

    start = time.perf_counter()
    if galaxies_per_batch < 1:
        raise invalid("--galaxies-per-batch", galaxies_per_batch, "an integer >= 1")
    pgcs = [int(galaxy.pgc) for galaxy in read_catalog(catalog)]
    if shard is not None:
        pgcs = [pgcs[row] for row in shard_range(len(pgcs), *shard)]
    counts = survey.measure(bundle=bundle, pgcs=pgcs, data_path=data_path, output=output, gallery=gallery,
                            bands=tuple(bands), root=root, identity=identity, galaxies_per_batch=galaxies_per_batch)
    check_outputs([output] + ([gallery] if gallery else []))
    seconds = time.perf_counter() - start
    logger.info("measure: %d galaxies (%d ok, %d partial, %d failed), %d band(s), %.1f s, %.2f galaxies/s",
                len(pgcs), counts["ok"], counts["partial"], counts["failed"], len(bands), seconds,
                len(pgcs) / seconds if seconds else 0.0)
    return counts


def add_arguments(parser):
    parser.add_argument("--bundle", required=True, metavar="DIR", help="model bundle (manifest.json + members)")
    parser.add_argument("--bundle-id", default=None, metavar="ID",
                        help="refuse a bundle whose identity (inclinet.bundle.identity) is not ID")
    parser.add_argument("-c", "--catalog", required=True, help="galaxy catalog (pipe-separated or CSV)")
    parser.add_argument("-p", "--data-path", required=True, metavar="DATA_DIR", help="folder of the raw images")
    parser.add_argument("-r", "--root", default=naming.DEFAULT_ROOT,
                        help=f"raw file name root, pgc<id>_<root>_<band> (default {naming.DEFAULT_ROOT})")
    parser.add_argument("--bands", default=",".join(naming.BANDS), type=survey.parse_bands,
                        help="comma list of g,r,i,gri (default all four)")
    parser.add_argument("--shard", default=None, metavar="I/K", help="catalog rows of shard I of K only")
    parser.add_argument("--galaxies-per-batch", type=int, default=survey.GALAXIES_PER_BATCH, metavar="N",
                        help=f"galaxies held in memory at once, all bands (default {survey.GALAXIES_PER_BATCH})")
    parser.add_argument("-o", "--output", required=True, metavar="CHUNK.csv", help="the chunk's catalog rows")
    parser.add_argument("--gallery", default=None, metavar="GALLERY.npz",
                        help=f"the chunk's {survey.GALLERY_SIZE} most uncertain galaxies (normalised images)")
    add_common_arguments(parser, seed=False)
    return parser


def build_parser():
    return add_arguments(argparse.ArgumentParser(prog="inclinet-measure", description=__doc__.splitlines()[0]))


def main(argv=None):
    parser = build_parser()

    def _run(args):
        run(bundle=args.bundle, catalog=args.catalog, data_path=args.data_path, output=args.output,
            gallery=args.gallery, bands=args.bands, root=args.root,
            shard=parse_shard(args.shard) if args.shard else None, identity=args.bundle_id,
            galaxies_per_batch=args.galaxies_per_batch)

    return run_main(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
