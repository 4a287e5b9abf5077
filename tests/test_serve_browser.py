"""The web page of inclinet-serve in a real headless chromium (Debian's chromium + chromium-driver).

A real ``inclinet-serve`` process serves a tiny bundle and a catalog; the page uploads an
image, turns and zooms it, evaluates it and the result is read off the page and compared
with the API's answer for the same request. A screenshot is kept in ``$INCLINET_ARTIFACTS``
(default: this test's pytest temporary folder) as ``serve_page.png``.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from test_serve import KNOWN_PGC, build_bundle, build_galaxies, galaxy_image  # a sibling test module

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _need(condition, why):
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (.ci/run installs it)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi")
    root = tmp_path_factory.mktemp("serve-browser")
    bundle = build_bundle(root)
    folder, catalog = build_galaxies(root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(root / "serve.log", "wb")  # noqa: SIM115 -- closed below, after the process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inclinet.service.cli",
            "--bundle",
            str(bundle),
            "--images",
            str(folder),
            "--catalog",
            str(catalog),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, (root / "serve.log").read_text()
                assert time.time() < deadline, "inclinet-serve did not start in 120 s"
                time.sleep(0.5)
        yield {"url": url, "root": root}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    _need(Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)")
    _need(Path(CHROMEDRIVER).exists(), "chromedriver is not installed (apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def post_file(url, path, fields):
    """The API's answer for the same upload (multipart built by hand: the standard library has no client for it)."""
    boundary = "inclinet-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        f"{url}/api/file",
        data=b"".join(parts),
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply)


def test_upload_turn_zoom_evaluate_and_read_the_result(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    image_path = tmp_path / "my_galaxy.png"
    Image.fromarray(galaxy_image(80, 100, seed=7)).save(image_path)
    browser.get(server["url"] + "/")
    assert browser.title.startswith("inclinet")
    browser.find_element(By.ID, "file").send_keys(str(image_path))
    wait_for(browser, lambda d: d.find_element(By.ID, "preview").is_displayed())
    for button in ("rotate-cw", "rotate-cw", "rotate-cw", "zoom-in"):
        browser.find_element(By.ID, button).click()
    assert browser.find_element(By.ID, "angle-value").text == "3"
    assert browser.find_element(By.ID, "scale-value").text == "1.11"
    assert "rotate(3deg)" in browser.find_element(By.ID, "preview").get_attribute("style")
    browser.find_element(By.ID, "evaluate").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    page = json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))
    expected = post_file(server["url"], image_path, {"angle": "3", "scale": repr(10 / 9)})
    assert page == expected
    median = browser.find_element(By.ID, "inc-median").text
    assert median == f"{expected['inclinations']['summary']['median']:.1f}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#inclinations tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["model4", "model41"]
    assert (
        browser.find_element(By.ID, "rej-median").text == f"{expected['rejection_likelihood']['summary']['median']:.1f}"
    )
    artefacts = Path(os.environ.get("INCLINET_ARTIFACTS") or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(artefacts / "serve_page.png"))
    assert (artefacts / "serve_page.png").stat().st_size > 1000
    # Nothing came from anywhere but the service.
    sources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert sources and all(s.startswith(server["url"]) or s.startswith("blob:") for s in sources), sources


def test_bad_files_and_unknown_pgc_give_clear_messages(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server["url"] + "/")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(notes))
    message = browser.find_element(By.ID, "message")
    wait_for(browser, lambda d: message.is_displayed())
    assert "notes.txt: not a PNG, JPG or GIF file" in message.text
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    browser.find_element(By.ID, "file").send_keys(str(broken))
    wait_for(browser, lambda d: "not a readable image" in message.text)
    assert browser.find_element(By.ID, "evaluate").get_attribute("disabled")
    browser.find_element(By.ID, "pgc").send_keys("999")
    browser.find_element(By.ID, "load-pgc").click()
    wait_for(browser, lambda d: "Could not find PGC999" in message.text)


def test_pgc_lookup_on_the_page(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server["url"] + "/")
    browser.find_element(By.ID, "pgc").send_keys(str(KNOWN_PGC))
    browser.find_element(By.ID, "load-pgc").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "preview").is_displayed())
    browser.find_element(By.ID, "evaluate").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    page = json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))
    with urllib.request.urlopen(f"{server['url']}/api/pgc/{KNOWN_PGC}", timeout=60) as reply:
        assert page == json.load(reply)
    assert page["galaxy"]["pgc"] == KNOWN_PGC


def test_api_docs_render_from_local_files(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server["url"] + "/api/docs")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    text = browser.find_element(By.ID, "swagger-ui").text
    assert "/api/file" in text and "/api/pgc/{pgc}" in text
    sources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(s.startswith(server["url"]) for s in sources), sources
