"""inclinet-merge: join the survey chunks into one catalog (CSV, and Parquet), refusing two bundles in one.

Chunks are read one at a time, in the order given; all must have the same columns and every
row the same bundle identity (:mod:`inclinet.survey`). Parquet needs pandas and pyarrow
(``pip install inclinet[survey]``); the bundle identity is also in its schema metadata
(``inclinet.bundle``).
"""

import argparse
import logging
import sys
import time

from inclinet import survey
from inclinet.cli import add_common_arguments, run_main
from inclinet.io import check_outputs

logger = logging.getLogger(__name__)


def run(*, inputs, output, parquet=None):
    """Merge ``inputs`` (chunk CSVs) into ``output`` (CSV) and ``parquet``; returns the counts."""
    start = time.perf_counter()
    result = survey.merge(list(inputs), output=output, parquet=parquet)
    check_outputs([output] + ([parquet] if parquet else []))
    logger.info(
        "merge: %d chunk(s), %d galaxies (%s), bundle %s, %.1f s",
        len(inputs),
        result["rows"],
        ", ".join(f"{k} {v}" for k, v in result["statuses"].items()),
        result["bundle"],
        time.perf_counter() - start,
    )
    return result


def add_arguments(parser):
    parser.add_argument(
        "-i",
        "--inputs",
        nargs="+",
        required=True,
        metavar="CHUNK.csv",
        help="chunk CSVs written by inclinet-measure, in catalog order",
    )
    parser.add_argument("-o", "--output", required=True, metavar="CATALOG.csv", help="the merged catalog (CSV)")
    parser.add_argument("--parquet", default=None, metavar="CATALOG.parquet", help="also write it as Parquet")
    add_common_arguments(parser, seed=False)
    return parser


def build_parser():
    return add_arguments(argparse.ArgumentParser(prog="inclinet-merge", description=__doc__.splitlines()[0]))


def main(argv=None):
    parser = build_parser()
    return run_main(parser, lambda args: run(inputs=args.inputs, output=args.output, parquet=args.parquet), argv)


if __name__ == "__main__":
    sys.exit(main())
