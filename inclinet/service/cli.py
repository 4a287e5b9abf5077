"""The ``inclinet-serve`` command line; FastAPI, uvicorn and TensorFlow are imported only to serve."""

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from inclinet.cli import add_common_arguments, run_main
from inclinet.errors import ConfigError, InputError, invalid

logger = logging.getLogger(__name__)

DEFAULT_PORT = 3030
#: The original's MAX_CONTENT_LENGTH.
DEFAULT_MAX_UPLOAD_BYTES = 1024 * 1024
#: 25 megapixels: a 5000 x 5000 cutout; larger images are refused before they are decoded.
DEFAULT_MAX_PIXELS = 25_000_000


@dataclass(frozen=True)
class Settings:
    """What a service runs with (the flags of ``inclinet-serve``)."""

    bundle: Path
    images: Path | None = None
    catalog: Path | None = None
    pixel_scale: float | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 16
    max_queue: int = 256


def add_arguments(parser):
    parser.add_argument("--bundle", required=True, metavar="DIR", help="model bundle (manifest.json + members)")
    parser.add_argument("--images", metavar="DIR", help="raw-layout folder of galaxy images for GET /api/pgc/{id}")
    parser.add_argument("--catalog", metavar="FILE", help="catalog (pipe or CSV) of the --images galaxies")
    parser.add_argument(
        "--pixel-scale",
        type=float,
        metavar="ARCSEC",
        help="arcsec per pixel of --images files not named d25x<F> (north-up cutouts), so "
        "they can be framed to 2 x D25",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1; 0.0.0.0 for every interface, as in a container)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=DEFAULT_MAX_UPLOAD_BYTES,
        metavar="N",
        help=f"largest accepted image file (default {DEFAULT_MAX_UPLOAD_BYTES}, 1 MB)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"largest accepted image in pixels, width x height (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=16,
        metavar="N",
        help="images predicted together when requests queue up (default 16)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="requests allowed to wait for the models; more are answered 503 (default 256)",
    )
    add_common_arguments(parser, seed=False)
    return parser


def settings_from(args):
    """Validated :class:`Settings` from parsed arguments."""
    if (args.images is None) != (args.catalog is None):
        raise ConfigError("invalid --images/--catalog: only one given; must give both to look galaxies up by PGC")
    for name in ("max_upload_bytes", "max_pixels", "max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise invalid("--" + name.replace("_", "-"), getattr(args, name), "a positive integer")
    if args.pixel_scale is not None and not args.pixel_scale > 0:
        raise invalid("--pixel-scale", args.pixel_scale, "a positive number of arcsec per pixel")
    if not 0 < args.port < 65536:
        raise invalid("--port", args.port, "a port number 1..65535")
    if args.images is not None and not Path(args.images).is_dir():
        raise InputError(f"{args.images}: --images folder not found; give the folder of the raw images")
    return Settings(
        bundle=Path(args.bundle),
        images=Path(args.images) if args.images else None,
        catalog=Path(args.catalog) if args.catalog else None,
        pixel_scale=args.pixel_scale,
        max_upload_bytes=args.max_upload_bytes,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )


def _serve(args):
    settings = settings_from(args)
    try:
        import uvicorn

        from inclinet.service.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"invalid install: {exc.name} is missing; must install inclinet[serve] (pip install -e '.[serve]')"
        ) from None
    app = create_app(settings)
    logger.info("serve: http://%s:%d/ (API docs at /api/docs)", args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning" if args.quiet else "info",
        access_log=not args.quiet,
        timeout_graceful_shutdown=10,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="inclinet-serve",
        description="Serve a model bundle as a REST API and a web page (the original IncliNET's JSON).",
    )
    add_arguments(parser)
    return run_main(parser, _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
