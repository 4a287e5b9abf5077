#!/usr/bin/env python3
"""Front door of inclinet: build the workflow DAG from flags and run it (see workflow/cli.py, --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
