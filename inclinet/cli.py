"""What every inclinet command line shares: common flags, logging set-up, exit codes."""

import logging
import sys
import time

from inclinet.errors import InclinetError

logger = logging.getLogger("inclinet")


def add_common_arguments(parser, *, seed=True):
    """Add ``--seed`` and ``-v/-q`` to a stage parser."""
    if seed:
        from inclinet import config

        config.add_argument(parser, "seed", metavar="SEED")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def configure_logging(verbose=0, quiet=False):
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True
    )


def run_main(parser, run, argv=None):
    """Parse ``argv``, configure logging, call ``run(args)`` and map errors to exit codes.

    0 ok, 1 runtime failure, 2 usage/config/input error. A traceback is printed only with
    ``-vv``; otherwise the user sees one ``error:`` line that says what to do.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its message
        return int(exc.code or 0)
    configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    start = time.perf_counter()
    try:
        run(args)
    except InclinetError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        if getattr(args, "verbose", 0) >= 2:
            logger.exception("details")
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{parser.prog}: error: out of memory; use smaller chunks/batches", file=sys.stderr)
        return 1
    logger.debug("%s finished in %.1f s", parser.prog, time.perf_counter() - start)
    return 0
