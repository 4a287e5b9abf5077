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


def test_workflow_docs_list_the_job_states_of_the_engines():
    """docs/workflow.md, "Job states": one row per state of ``JOB_STATES``, in its order, and no other."""
    from workflow.engines.common import JOB_STATES, PROBLEM_STATES

    text = (ROOT / "docs" / "workflow.md").read_text(encoding="utf-8")
    section = text.split("## Job states", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")]
    assert tuple(rows) == JOB_STATES
    exits_1 = section.split("`status` exits 1 when a job is", 1)[1].split("(", 1)[0]
    assert [state for state in JOB_STATES if f"`{state}`" in exits_1] == list(PROBLEM_STATES)
