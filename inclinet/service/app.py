"""The FastAPI application of ``inclinet-serve``: the API under ``/api`` and the web page at ``/``.

Every answer is JSON; every refusal is ``{"status": "failed", "message": ...}`` with a 4xx
code naming the problem (5xx only for the service's own faults), in the original's shape.
"""

import logging
import tempfile
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from inclinet.service.inference import Busy, Inference
from inclinet.service.sources import RequestProblem, check_upload, decode_upload, parse_pgc, transform

logger = logging.getLogger(__name__)

#: Bytes of multipart envelope (boundaries, headers, the angle and scale fields) allowed beyond the file.
ENVELOPE_BYTES = 64 * 1024


def failed(status, message, **extra):
    return JSONResponse({"status": "failed", **extra, "message": message}, status_code=status)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413) without reading them: by Content-Length, or as they stream."""

    def __init__(self, app, limit):
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await failed(400, f"invalid Content-Length: {declared[:40]!r}")(scope, receive, send)
            if length > self.limit:
                return await self._too_large(length)(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise StarletteHTTPException(413, self._message(received))
            return message

        await self.app(scope, limited, send)

    def _message(self, length):
        return (
            f"request of {length} bytes is over the limit of {self.limit - ENVELOPE_BYTES} bytes for an image; "
            "upload a smaller image"
        )

    def _too_large(self, length):
        return failed(413, self._message(length))


def create_app(settings):
    """The application for ``settings`` (see :class:`inclinet.service.cli.Settings`)."""
    from inclinet.stages import predict

    bundle = predict.Bundle(settings.bundle)
    inference = Inference(bundle, max_batch=settings.max_batch, max_queue=settings.max_queue)
    galaxies = None
    if settings.images is not None:
        from inclinet.service.sources import Galaxies

        galaxies = Galaxies(
            settings.images, settings.catalog, pixel_scale=settings.pixel_scale, max_pixels=settings.max_pixels
        )
    started = time.time()
    counters = {"answered": 0, "refused": 0, "errors": 0}
    scratch = tempfile.TemporaryDirectory(prefix="inclinet-serve-")

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(inference.load)
        inference.start()
        logger.info(
            "serve: bundle %s ready (%d member(s), %s)",
            settings.bundle,
            len(bundle.members),
            f"{len(galaxies)} catalog galaxies" if galaxies is not None else "no catalog",
        )
        try:
            yield
        finally:
            inference.stop()
            scratch.cleanup()

    app = FastAPI(
        title="inclinet API",
        version=bundle.manifest.get("versions", {}).get("inclinet", "unknown"),
        description=(
            "Inclinations of spiral galaxies (degrees, 45-90) from a bundle of CNNs, with the "
            "likelihood that a galaxy is unfit for the measurement (percent). Answers follow the "
            "original IncliNET JSON: inclinations per group (`Group_0` model4, `Group_1` model5, "
            "`Group_2` model6) with their `summary`, and `rejection_likelihood`."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    # The bundled Swagger UI (4.x) reads OpenAPI 3.0 documents; ours uses nothing of 3.1.
    app.openapi_version = "3.0.3"
    app.state.inference = inference
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + ENVELOPE_BYTES)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        counters["refused"] += 1
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page: {request.url.path}; the API is under /api (see /api/docs)"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}; see /api/docs"
        return failed(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        counters["refused"] += 1
        content_type = request.headers.get("content-type", "")
        if request.url.path == "/api/file" and not content_type.startswith("multipart/form-data"):
            return failed(
                415,
                f"content type {content_type or '(none)'} is not accepted; send multipart/form-data "
                "with the image in the field 'file'",
            )
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return failed(422, f"invalid {where}: {first.get('msg', 'not valid')}; see /api/docs")

    @app.exception_handler(RequestProblem)
    async def request_problem(request, exc):
        counters["refused"] += 1
        return failed(exc.status, exc.message)

    @app.exception_handler(Busy)
    async def busy(request, exc):
        counters["refused"] += 1
        return failed(503, f"the service is busy ({exc}); retry in a moment")

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        counters["errors"] += 1
        logger.error("serve: %s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        return failed(500, f"internal error ({exc.__class__.__name__}); the service log has the details")

    async def answer(image, name, extra=None):
        result = await inference.predict(image, name)
        if result["status"] != "success":
            counters["refused"] += 1
            return failed(422, result["message"], filename=name)
        counters["answered"] += 1
        return {
            "status": "success",
            "filename": name,
            **(extra or {}),
            **{k: v for k, v in result.items() if k not in ("status", "filename")},
        }

    @app.post("/api/file", summary="Inclinations of an uploaded image", tags=["inclinations"])
    async def api_file(
        file: Annotated[UploadFile, File(description="PNG, JPG, JPEG or GIF galaxy image, major axis horizontal")],
        angle: Annotated[float, Form(description="turn the image this many degrees clockwise first")] = 0.0,
        scale: Annotated[float, Form(gt=0.01, le=100.0, description="zoom: >1 crops the centre, <1 pads")] = 1.0,
    ):
        """The original's ``/api/file``: one image in the multipart field ``file``, at most the
        configured size (1 MB by default); the answer has ``inclinations``, ``rejection_likelihood``,
        ``peer``, ``member_spread``, ``out_of_distribution`` and ``warnings``."""
        name = check_upload(file.filename, file.content_type)
        data = await file.read(settings.max_upload_bytes + 1)
        image = await run_in_threadpool(
            decode_upload,
            data,
            name,
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            scratch=scratch.name,
        )
        if angle or scale != 1:
            image = await run_in_threadpool(transform, image, angle=angle, scale=scale)
        return await answer(image, name)

    def galaxy_image(pgc):
        if galaxies is None:
            raise RequestProblem(
                404,
                "this service has no catalog; start inclinet-serve with --images DIR "
                "--catalog FILE to look galaxies up by PGC",
            )
        return galaxies.get(parse_pgc(pgc))

    @app.get("/api/pgc/{pgc}", summary="Inclinations of a catalog galaxy", tags=["inclinations"])
    async def api_pgc(pgc: str, angle: float = 0.0, scale: float = 1.0):
        """The galaxy's colour image from the local raw-layout folder, framed as the training
        images (``d25x2_rot``), optionally turned and zoomed further; 404 when unknown."""
        found = await run_in_threadpool(galaxy_image, pgc)
        image = found.image
        if angle or scale != 1:
            image = await run_in_threadpool(transform, image, angle=angle, scale=scale)
        row = found.galaxy
        galaxy = {
            "pgc": found.pgc,
            "pa": row.pa,
            "d25": row.d25,
            "b_a": row.b_a,
            "image": found.file,
            "prepared": found.prepared,
        }
        return await answer(image, found.file, {"galaxy": galaxy})

    @app.get(
        "/api/pgc/{pgc}/image",
        summary="The image a PGC lookup evaluates (PNG)",
        tags=["galaxies"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def api_pgc_image(pgc: str):
        found = await run_in_threadpool(galaxy_image, pgc)

        def encode():
            import io

            from PIL import Image

            stream = io.BytesIO()
            Image.fromarray(found.image).save(stream, format="PNG")
            return stream.getvalue()

        return Response(await run_in_threadpool(encode), media_type="image/png")

    @app.get("/api/health", summary="Liveness and counters", tags=["service"])
    async def api_health():
        return {
            "status": "ok",
            "uptime_s": round(time.time() - started, 1),
            "members": len(bundle.members),
            "waiting": inference.waiting,
            "batches": inference.batches,
            **counters,
            "catalog_galaxies": len(galaxies) if galaxies is not None else 0,
        }

    @app.get("/api/bundle", summary="The bundle served: members, input size, versions, metrics", tags=["service"])
    async def api_bundle():
        manifest = bundle.manifest
        keys = (
            "format_version",
            "groups",
            "input_size",
            "views",
            "seed",
            "versions",
            "metrics",
            "calibration",
            "normalisation",
            "pixel_scaling",
            "label_scaling",
            "reject_temperatures",
        )
        return {
            "status": "success",
            "members": [{k: m.get(k) for k in ("name", "model", "task", "subset")} for m in manifest["members"]],
            **{k: manifest.get(k) for k in keys},
            "peer": (manifest.get("peer") or {}).get("best"),
            "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels},
            "catalog": galaxies is not None,
        }

    static = resources.files("inclinet.service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    _mount_docs(app)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    return app


def _mount_docs(app):
    """Swagger UI at /api/docs from the files of the swagger-ui-bundle package (nothing from the internet)."""
    import swagger_ui_bundle

    app.mount("/api/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")
    page = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>inclinet API</title>
<link rel="stylesheet" href="/api/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/api/docs/assets/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="/api/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>"""

    @app.get("/api/docs", include_in_schema=False)
    async def docs():
        return HTMLResponse(page)
