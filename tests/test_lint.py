"""The code passes ruff's lint and format check (the rules and the commented ignores are in pyproject.toml)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args):
    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is not installed (pip install -e '.[dev]'); CI must lint")
        pytest.skip("ruff is not installed (the dev extra)")
    return subprocess.run([sys.executable, "-m", "ruff", *args, str(ROOT)], capture_output=True, text=True, cwd=ROOT)


def test_ruff_check_passes():
    result = _ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied():
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr
