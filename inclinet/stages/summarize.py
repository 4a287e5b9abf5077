"""inclinet-summarize: the survey's report: inclination and rejection distributions, agreement, a gallery.

Reads the merged catalog (:mod:`inclinet.survey`) and the chunks' gallery files; writes one
self-contained HTML page (figures inline) and, with ``--numbers``, the same numbers as JSON:
counts by status, the distributions of ``inc_median`` and ``p_reject``, the agreement
(median and rms of the differences) between every pair of bands and between the ensemble
and the classical peer, and the most uncertain galaxies (largest ``inc_std``) as a gallery.
"""

import argparse
import logging
import sys
import time

from inclinet import survey
from inclinet.cli import add_common_arguments, run_main
from inclinet.io import check_outputs

logger = logging.getLogger(__name__)


def run(*, catalog, output, galleries=(), numbers=None):
    """Write the report of ``catalog`` to ``output`` (HTML) and ``numbers`` (JSON); returns the numbers."""
    start = time.perf_counter()
    result = survey.summarize(catalog=catalog, galleries=list(galleries), output=output, numbers_path=numbers)
    check_outputs([output] + ([numbers] if numbers else []))
    logger.info(
        "summarize: %d galaxies, bundle %s, %.1f s", result["galaxies"], result["bundle"], time.perf_counter() - start
    )
    return result


def add_arguments(parser):
    parser.add_argument("-c", "--catalog", required=True, metavar="CATALOG.csv", help="merged survey catalog")
    parser.add_argument(
        "--galleries",
        nargs="*",
        default=(),
        metavar="GALLERY.npz",
        help="gallery files of the chunks (inclinet-measure --gallery)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="the report page")
    parser.add_argument("--numbers", default=None, metavar="REPORT.json", help="also write the numbers as JSON")
    add_common_arguments(parser, seed=False)
    return parser


def build_parser():
    return add_arguments(argparse.ArgumentParser(prog="inclinet-summarize", description=__doc__.splitlines()[0]))


def main(argv=None):
    parser = build_parser()
    return run_main(
        parser,
        lambda args: run(catalog=args.catalog, output=args.output, galleries=args.galleries, numbers=args.numbers),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
