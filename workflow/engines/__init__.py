"""Engines that execute one DAG: local processes, SLURM, or Pegasus/HTCondor.

Each engine module provides ``add_arguments(parser)``, ``run(run_dir, jobs, args)``,
``status(run_dir, args)``, ``resume(run_dir, args)`` and ``cancel(run_dir, args)``.
Modules are imported only when their engine is used.
"""

import importlib

ENGINES = ("local", "pegasus", "slurm")


def load(name):
    """Import and return the engine module ``name``."""
    if name not in ENGINES:
        from inclinet.errors import invalid

        raise invalid("--engine", name, "one of " + ", ".join(ENGINES))
    return importlib.import_module(f"workflow.engines.{name}")
