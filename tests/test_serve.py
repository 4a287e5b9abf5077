"""Tests of inclinet-serve: the API against the real app (a tiny untrained bundle), bad input, concurrency."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import untrained_bundle
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402 -- after the skips above

from inclinet import models  # noqa: E402
from inclinet.catalog import Galaxy, write_catalog  # noqa: E402
from inclinet.service import cli  # noqa: E402
from inclinet.service.app import create_app  # noqa: E402
from inclinet.service.sources import transform  # noqa: E402
from inclinet.stages import predict  # noqa: E402

SIZE = 32
KNOWN_PGC = 1000001
TURNED_PGC = 1000002
NO_IMAGE_PGC = 1000003


def galaxy_image(height, width, *, seed=0, axis_ratio=0.5):
    """A bright elongated blob on a dark noisy sky, major axis horizontal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    profile = np.exp(
        -((xx - width / 2) ** 2 / (0.15 * width) ** 2 + (yy - height / 2) ** 2 / (0.15 * axis_ratio * height) ** 2)
    )
    base = 20 + profile * 200 + rng.normal(0, 3, profile.shape)
    return np.clip(np.stack([base, base * 0.9, base * 0.7], axis=-1), 0, 255).astype(np.uint8)


def encoded(array, fmt="PNG"):
    stream = io.BytesIO()
    Image.fromarray(array).save(stream, format=fmt)
    return stream.getvalue()


def png_header_only(width, height):
    """A PNG that declares ``width x height`` pixels but carries almost no data (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def build_bundle(root):
    members = (("model4", 0, "regression"), ("model4", 1, "regression"), ("model4", "binary", "binary"))
    return untrained_bundle(root, members, size=SIZE)


def build_galaxies(root):
    """A raw-layout folder: one d25x2_rot image, one north-up d25x1.5 cutout, and a catalog row without image."""
    folder = root / "galaxies"
    folder.mkdir()
    Image.fromarray(galaxy_image(96, 96)).save(folder / f"pgc{KNOWN_PGC}_d25x2_rot_gri.sdss.jpg", quality=95)
    pa = 30.0
    # A sky cutout: the horizontal galaxy turned back by pa + 90 deg (counter-clockwise on screen).
    sky = Image.fromarray(galaxy_image(96, 96, seed=1)).rotate(pa + 90.0, resample=Image.BICUBIC)
    sky.save(folder / f"pgc{TURNED_PGC}_d25x1.5_gri.jpg", quality=95)
    rows = [
        Galaxy(pgc=KNOWN_PGC, inc=70, pa=12.0, d25=1.2, b_a=0.5),
        Galaxy(pgc=TURNED_PGC, inc=65, pa=pa, d25=1.5, b_a=0.5),
        Galaxy(pgc=NO_IMAGE_PGC, inc=80, pa=0.0, d25=1.0, b_a=0.3),
    ]
    write_catalog(root / "catalog.csv", [row.as_row() for row in rows])
    return folder, root / "catalog.csv"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    bundle = build_bundle(root)
    folder, catalog = build_galaxies(root)
    settings = cli.Settings(bundle=bundle, images=folder, catalog=catalog)
    with TestClient(create_app(settings)) as client:
        yield {"client": client, "bundle": bundle, "root": root, "folder": folder}


@pytest.fixture()
def client(served):
    return served["client"]


def upload(client, content, name="galaxy.png", content_type="image/png", **fields):
    return client.post(
        "/api/file", files={"file": (name, content, content_type)}, data={k: str(v) for k, v in fields.items()}
    )


def flat(answer, prefix=""):
    """The numbers and strings of a nested answer as one flat dict (for approximate comparison)."""
    items = {}
    for key, value in answer.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items[prefix + key] = value
    return items


def assert_refused(response, status, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "failed"
    for word in words:
        assert word in body["message"], body["message"]
    assert "\n" not in body["message"]


def test_help_imports_neither_tensorflow_nor_fastapi():
    code = (
        "import sys; from inclinet.service import cli; rc = cli.main(['--help']); "
        "assert 'tensorflow' not in sys.modules and 'fastapi' not in sys.modules, 'heavy import'; "
        "sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--bundle" in result.stdout and "3030" in result.stdout


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["--bundle", str(tmp_path), "--images", str(tmp_path)]) == 2
    assert "must give both" in capsys.readouterr().err
    assert cli.main(["--bundle", str(tmp_path), "--max-upload-bytes", "0"]) == 2
    assert "invalid --max-upload-bytes" in capsys.readouterr().err
    assert cli.main(["--bundle", str(tmp_path / "none")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_upload_answers_as_inclinet_predict(client, served, tmp_path):
    image = galaxy_image(60, 80, seed=3)
    path = tmp_path / "galaxy.png"
    Image.fromarray(image).save(path)
    response = upload(client, path.read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = predict.run(bundle=served["bundle"], inputs=[path], stream=io.StringIO())[0]
    assert answer == {**expected, "filename": "galaxy.png"}
    assert list(answer["inclinations"]) == ["Group_0", "summary"]
    assert list(answer["inclinations"]["Group_0"]) == ["model4", "model41"]
    assert set(answer["rejection_likelihood"]) == {"model4-binary", "summary"}
    assert {"member_spread", "out_of_distribution", "warnings"} <= set(answer)


def test_jpeg_gif_gray_and_view_parameters(client, served):
    array = galaxy_image(64, 64, seed=4)
    for name, fmt, content_type in (
        ("g.jpg", "JPEG", "image/jpeg"),
        ("g.JPEG", "JPEG", "application/octet-stream"),
        ("g.gif", "GIF", "image/gif"),
    ):
        response = upload(client, encoded(array, fmt), name, content_type)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["filename"] == name
    gray = encoded(array[:, :, 0])
    assert upload(client, gray, "gray.png").status_code == 200
    # angle and scale are applied as the GUI shows them, then the canonical normalisation.
    turned = upload(client, encoded(array), angle=90, scale=1.25).json()
    expected = predict.predict_images(
        predict.Bundle(served["bundle"]), [transform(array, angle=90, scale=1.25)], names=["galaxy.png"]
    )[0]
    assert turned == expected


def test_transform_turns_clockwise_and_zooms():
    image = np.zeros((40, 40, 3), np.uint8)
    image[5, 30] = 255  # upper right
    turned = transform(image, angle=90)
    assert turned.shape == (40, 40, 3)
    y, x = np.unravel_index(np.argmax(turned[..., 0]), turned.shape[:2])
    assert y > 20 and x > 20  # clockwise: upper right goes to lower right
    assert transform(image, scale=2).shape == (20, 20, 3)
    assert transform(image, scale=0.5).shape == (80, 80, 3)
    assert transform(galaxy_image(30, 50), angle=0).shape == (50, 50, 3)


def test_bad_uploads_are_4xx_and_the_next_request_is_served(client):
    good = encoded(galaxy_image(48, 48))
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    cases = [
        (upload(client, b""), 400, "empty file"),
        (upload(client, good[: len(good) // 2]), 400, "galaxy.png"),
        (upload(client, b"just some text, not pixels" * 10), 400, "not a readable image"),
        (upload(client, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "image/svg+xml"), 415, "extension .svg"),
        (upload(client, good, "notes.txt", "text/plain"), 415, "extension .txt"),
        (upload(client, good, "galaxy.png", "text/html"), 415, "content type text/html"),
        (upload(client, good, "noext"), 415, "extension (none)"),
        (upload(client, encoded(noise)), 413, "over the limit"),
        (upload(client, png_header_only(6000, 6000)), 413, "6000 x 6000 pixels"),
        (upload(client, png_header_only(60000, 60000)), 413, "pixel limit"),
        (upload(client, png_header_only(4, 4000)), 400, "too small"),
        (upload(client, encoded(galaxy_image(2, 2))), 400, "too small"),
        (upload(client, encoded(np.zeros((64, 64, 3), np.uint8))), 200, ""),
        (upload(client, good, angle="north"), 422, "invalid angle"),
        (upload(client, good, scale=0), 422, "invalid scale"),
        (client.post("/api/file", json={"file": "galaxy.png"}), 415, "multipart/form-data"),
        (client.post("/api/file", files={"image": ("galaxy.png", good, "image/png")}), 422, "invalid file"),
        (client.get("/api/file"), 405, "GET not allowed"),
        (client.get("/api/nothing"), 404, "no such page"),
    ]
    for response, status, words in cases:
        if status == 200:
            assert response.status_code == 200, response.text  # a blank frame is an answer, flagged
            assert response.json()["out_of_distribution"] is True
            continue
        assert_refused(response, status, words)
        assert upload(client, good).status_code == 200
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["refused"] >= 10 and health["errors"] == 0


def test_pgc_lookup(client):
    response = client.get(f"/api/pgc/{KNOWN_PGC}")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["galaxy"]["pgc"] == KNOWN_PGC
    assert answer["galaxy"]["prepared"] == "as is" and answer["galaxy"]["pa"] == 12.0
    assert client.get(f"/api/pgc/PGC{KNOWN_PGC}").json()["inclinations"] == answer["inclinations"]
    turned = client.get(f"/api/pgc/{TURNED_PGC}").json()
    assert turned["galaxy"]["prepared"].startswith("turned 120 deg clockwise, zoomed x0.75")
    image = client.get(f"/api/pgc/{TURNED_PGC}/image")
    assert image.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(image.content)).convert("L"), dtype=float)
    # Turned back to horizontal: the light is spread wider than tall.
    yy, xx = np.indices(pixels.shape)
    weights = np.clip(pixels - 100, 0, None)  # the galaxy, not the sky or the black fill
    spread_x = np.average((xx - np.average(xx, weights=weights)) ** 2, weights=weights)
    spread_y = np.average((yy - np.average(yy, weights=weights)) ** 2, weights=weights)
    assert spread_x > 2 * spread_y
    assert_refused(client.get("/api/pgc/999"), 404, "Could not find PGC999")
    assert_refused(client.get(f"/api/pgc/{NO_IMAGE_PGC}"), 404, "no colour image")
    for trick in ("..%2F..%2Fetc%2Fpasswd", "1%3Brm", "pgc1%00", "-1", "0", "1e5", "%2e%2e", "9" * 30):
        response = client.get(f"/api/pgc/{trick}")
        assert response.status_code in (400, 404), (trick, response.text)
        assert response.json()["status"] == "failed"
    assert_refused(client.get("/api/pgc/..%5Csecret"), 400, "invalid pgc")
    assert client.get(f"/api/pgc/{KNOWN_PGC}").status_code == 200


def test_health_bundle_and_docs_are_local(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["members"] == 3 and health["catalog_galaxies"] == 3
    bundle = client.get("/api/bundle").json()
    assert [m["name"] for m in bundle["members"]] == ["model4", "model41", "model4-binary"]
    assert bundle["input_size"] == SIZE and "versions" in bundle and bundle["limits"]["max_upload_bytes"] == 1048576
    spec = client.get("/api/openapi.json").json()
    assert {"/api/file", "/api/pgc/{pgc}", "/api/health", "/api/bundle"} <= set(spec["paths"])
    for page in ("/api/docs", "/"):
        html = client.get(page).text
        assert "http://" not in html and "https://" not in html, page
    assert client.get("/api/docs/assets/swagger-ui-bundle.js").status_code == 200
    for asset in ("/static/app.js", "/static/style.css", "/static/docs.js"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text, asset


def test_small_limit_streamed_body_and_no_catalog(tmp_path, served):
    settings = cli.Settings(bundle=served["bundle"], max_upload_bytes=2000)
    with TestClient(create_app(settings)) as small:
        big = encoded(galaxy_image(80, 80, seed=5))
        assert len(big) > 2000
        assert_refused(upload(small, big), 413, "2000-byte limit")
        assert_refused(upload(small, big + b"\x00" * 70_000), 413, "over the limit")

        def chunks():
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            for _ in range(20):
                yield b"\x00" * 8192

        streamed = small.post(
            "/api/file", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert_refused(streamed, 413, "over the limit")
        assert_refused(small.get(f"/api/pgc/{KNOWN_PGC}"), 404, "--images DIR --catalog FILE")
        assert upload(small, encoded(galaxy_image(16, 16))).status_code == 200


def test_concurrent_requests_share_one_copy_of_the_models(client, served):
    keras = models.import_keras()
    loads = []
    original = keras.models.load_model
    keras.models.load_model = lambda *a, **k: loads.append(a) or original(*a, **k)
    try:
        images = [encoded(galaxy_image(48, 48, seed=seed)) for seed in range(4)]
        before = client.get("/api/health").json()

        def one(index):
            return upload(client, images[index % 4], f"g{index % 4}.png").json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(64)))
    finally:
        keras.models.load_model = original
    assert loads == []
    assert all(a["status"] == "success" for a in answers)
    for index, answer in enumerate(answers):
        # Batched with others, float32 arithmetic may differ in the 7th digit; never more (the
        # likelihoods are reported to 0.01 percent, so one may differ by that step).
        assert flat(answer) == pytest.approx(flat(answers[index % 4]), rel=1e-5, abs=0.011)
    after = client.get("/api/health").json()
    assert after["answered"] - before["answered"] == 64
    assert after["batches"] - before["batches"] <= 64


@pytest.mark.slow
def test_the_command_serves_until_stopped(tmp_path, served):
    """inclinet-serve as a process: start, answer /api/health, shut down cleanly on SIGTERM."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "inclinet.service.cli", "--bundle", str(served["bundle"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as reply:
                    assert json.load(reply)["status"] == "ok"
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.time() < deadline, "inclinet-serve did not start in 120 s"
                time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    # uvicorn shuts down cleanly, then re-raises the signal it caught (exit status -15).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
