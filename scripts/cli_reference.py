"""Write the command-line reference of every inclinet tool into README.md.

The reference is the ``--help`` text of each tool, between the markers
``<!-- cli-reference:start -->`` and ``<!-- cli-reference:end -->``; ``tests/test_docs.py``
fails when README.md and the tools disagree. Usage::

    python scripts/cli_reference.py            # rewrite README.md
    python scripts/cli_reference.py --check    # exit 1 if README.md is out of date
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"
sys.path.insert(0, str(ROOT))
from inclinet.stages import STAGES  # noqa: E402 - the registry, from this checkout

WORKFLOW = (
    ("run_workflow.py", []),
    ("run_workflow.py status", ["status"]),
    ("run_workflow.py resume", ["resume"]),
    ("run_workflow.py cancel", ["cancel"]),
)
#: Tools that are not workflow stages: (executable, module).
TOOLS = (("inclinet-serve", "inclinet.service.cli"),)


def _help(argv):
    env = dict(os.environ, COLUMNS="100", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, *argv, "--help"], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return result.stdout.rstrip()


def reference():
    parts = [START]
    for title, sub in WORKFLOW:
        parts += [f"#### `{title}`", "```", _help([str(ROOT / "run_workflow.py"), *sub]), "```"]
    for stage in STAGES:
        parts += [f"#### `{stage.executable}`", "```", _help(["-m", stage.module_name]), "```"]
    for executable, module in TOOLS:
        parts += [f"#### `{executable}`", "```", _help(["-m", module]), "```"]
    parts.append(END)
    return "\n".join(parts)


def updated_readme():
    text = README.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return head + reference() + tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when README.md is out of date")
    args = parser.parse_args(argv)
    new = updated_readme()
    if args.check:
        if new != README.read_text(encoding="utf-8"):
            print("README.md's command-line reference is out of date: run python scripts/cli_reference.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
