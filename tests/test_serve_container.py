"""The container definitions' serve entry point, checked without a container tool.

Building the images needs the TensorFlow base image from a registry, so these tests check
what can be checked here: the files the definitions copy exist, their shell sections parse,
both write the same ``serve`` wrapper, it runs ``inclinet-serve`` on every interface, and
both install the ``serve`` extra's packages and expose its default port.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inclinet.service import cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DEFINITION = ROOT / "containers" / "inclinet.def"
DOCKERFILE = ROOT / "containers" / "Dockerfile"
WRAPPER = re.compile(r"printf '(#!/bin/sh\\n[^']*)'")


def sections(text):
    """``{"%post": body, "%apprun serve": body, ...}`` of an Apptainer definition."""
    found = {}
    current = None
    for line in text.splitlines():
        if line.startswith("%"):
            current = line.strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in found.items()}


def wrapper_text(definition_text):
    match = WRAPPER.search(definition_text)
    assert match, "no printf writing the serve wrapper"
    return match.group(1).encode().decode("unicode_escape")


def serve_requirements():
    with open(ROOT / "pyproject.toml", "rb") as stream:
        return tomllib.load(stream)["project"]["optional-dependencies"]["serve"]


def test_the_definitions_copy_files_that_exist():
    for line in sections(DEFINITION.read_text())["%files"].splitlines():
        if line.strip():
            assert (ROOT / line.split()[0]).exists(), line
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line


@pytest.mark.parametrize("name", ["%post", "%apprun serve", "%test", "%runscript", "%environment"])
def test_shell_sections_parse(name):
    body = sections(DEFINITION.read_text())[name]
    result = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr
    if name == "%apprun serve":
        assert 'exec /usr/local/bin/serve "$@"' in body
    if name == "%test":
        assert "serve --help" in body


def test_both_images_get_the_same_serve_wrapper_on_every_interface():
    script = wrapper_text(DEFINITION.read_text())
    assert wrapper_text(DOCKERFILE.read_text()) == script
    assert script.startswith("#!/bin/sh\n")
    assert 'exec inclinet-serve --host 0.0.0.0 "$@"' in script
    dockerfile = DOCKERFILE.read_text()
    assert f"EXPOSE {cli.DEFAULT_PORT}" in dockerfile
    assert "serve --help" in dockerfile  # the build fails if the wrapper does not run


def test_both_images_install_the_serve_extra():
    for path in (DEFINITION, DOCKERFILE):
        text = path.read_text()
        for requirement in serve_requirements():
            assert f'"{requirement}"' in text, f"{path.name} lacks {requirement}"


def test_the_wrapper_runs_inclinet_serve(tmp_path):
    found = shutil.which("inclinet-serve", path=str(Path(sys.executable).parent)) or shutil.which("inclinet-serve")
    if found is None:
        pytest.skip("inclinet-serve is not installed as a command")
    serve = tmp_path / "serve"
    serve.write_text(wrapper_text(DEFINITION.read_text()))
    serve.chmod(0o755)
    path = os.pathsep.join([str(Path(found).parent), os.environ.get("PATH", "")])
    shown = subprocess.run(
        [str(serve), "--help"], capture_output=True, text=True, env={**os.environ, "PATH": path}, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert "usage: inclinet-serve" in shown.stdout
    # The wrapper's --host comes first, so a --host given by the user still wins (argparse keeps the last).
    refused = subprocess.run(
        [str(serve), "--bundle", str(tmp_path / "none"), "--port", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert "--port" in refused.stderr
