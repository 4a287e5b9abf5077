"""Engines that execute one DAG: local processes, SLURM, or Pegasus/HTCondor.

Every engine module follows :class:`Engine`: the workflow CLI builds the DAG (or reads
``RUN/jobs.json`` back) once and hands the jobs to the engine, which never reads
``run.json`` or rebuilds anything. All engines share one retry policy, one set of job
states and one meaning of ``status``'s exit code (:mod:`workflow.engines.common`); the
local and SLURM engines run each job under the same wrapper, which writes the same exit
record (:mod:`workflow.engines.jobwrap`). Modules are imported only when their engine is used.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

ENGINES = ("local", "pegasus", "slurm")


class Engine(Protocol):
    """What an engine module provides (module-level functions and one tuple)."""

    #: Engine flags recorded at build (``run.json``) that status/resume/cancel reuse when not given again.
    RECORDED_FLAGS: tuple[str, ...]

    def add_arguments(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the engine's own flags to ``parser`` (an argument group)."""

    def run(self, run_dir: Path, jobs: Sequence, args: argparse.Namespace) -> int:
        """Run or submit the jobs of a freshly written run directory; the exit code of ``run_workflow.py``."""

    def status(self, run_dir: Path, jobs: Sequence, args: argparse.Namespace) -> int:
        """Print the state of every job; 1 when one is failed, blocked, cancelled or lost, else 0."""

    def resume(self, run_dir: Path, jobs: Sequence, args: argparse.Namespace) -> int:
        """Run again what did not finish (failed, cancelled, lost, never run); keep what is done."""

    def cancel(self, run_dir: Path, jobs: Sequence, args: argparse.Namespace) -> int:
        """Stop the jobs of the run that are queued or running."""


def load(name) -> Engine:
    """Import and return the engine module ``name``."""
    if name not in ENGINES:
        from inclinet.errors import invalid

        raise invalid("--engine", name, "one of " + ", ".join(ENGINES))
    return importlib.import_module(f"workflow.engines.{name}")
