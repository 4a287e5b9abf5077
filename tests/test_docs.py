"""README.md stays true: its command-line reference is the tools' own --help text."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_cli_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_names_both_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    for script in ("scripts/demo.sh", "scripts/test.sh", ".ci/run"):
        assert (ROOT / script).is_file()
