"""The stage registry: every stage of inclinet listed once, with what the rest derives from it.

The DAG builder, the engines, the Pegasus transformation catalog, the console scripts
(``pyproject.toml``), the ``bin/`` executables and the README's command-line reference
read :data:`STAGES`; ``tests/test_stages_registry.py`` checks that ``pyproject.toml`` and
``bin/`` agree with it. Importing this package imports no stage module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: module ``inclinet.stages.<name>``, executable ``inclinet-<name>``.

    ``in_dag``: the workflow runs it as jobs (predict applies a finished bundle by hand; the
    survey workflow runs measure, merge and summarize instead of the training stages).
    ``cores``/``gpus``: what one job of the stage asks for (training, the search's trial
    jobs and evaluation ask for 2 cores: TensorFlow runs several threads, and on a small
    machine two such jobs at once would only thrash).
    """

    name: str
    summary: str
    in_dag: bool = True
    cores: int = 1
    gpus: int = 0

    @property
    def module_name(self):
        return f"inclinet.stages.{self.name}"

    @property
    def executable(self):
        return f"inclinet-{self.name}"

    def module(self):
        """The stage module (imported now; building a DAG never needs it)."""
        return importlib.import_module(self.module_name)

    def build_parser(self):
        """The stage's own argument parser."""
        return self.module().build_parser()


#: Every stage, in the order data flows through them.
STAGES = (
    Stage("synth", "synthetic universe of spiral galaxies in the raw layout"),
    Stage("prep", "resize one band of a catalog shard into an npz"),
    Stage("compress", "merge one band's prep parts into one npz"),
    Stage("split", "test/train subsets by galaxy, identical in every band"),
    # The hyper-parameter search (run_workflow.py --hpo-trials N): trial jobs, then one select job.
    Stage("hpo", "hyper-parameter search: trial jobs over Optuna studies, then the best parameters", cores=2, gpus=1),
    Stage("augment", "balanced augmented batches of one training subset"),
    Stage("train", "train one model x subset x task, resumable", cores=2, gpus=1),
    Stage("evaluate", "score the members and ensembles; write the bundle", cores=2, gpus=1),
    Stage("predict", "apply a model bundle to new images", in_dag=False),
    # The survey workflow (run_workflow.py --predict-with BUNDLE): a finished bundle over a catalog.
    Stage("measure", "one catalog chunk through a model bundle, every band (survey workflow)"),
    Stage("merge", "join the survey chunks into one catalog, CSV and Parquet"),
    Stage("summarize", "the survey's report: distributions, agreement, most uncertain galaxies"),
)

BY_NAME = {stage.name: stage for stage in STAGES}
#: Names of the stages the workflow runs as jobs, in data-flow order.
DAG_STAGES = tuple(stage.name for stage in STAGES if stage.in_dag)
#: ``{executable: "module:main"}``: the console scripts of ``pyproject.toml``.
CONSOLE_SCRIPTS = {stage.executable: f"{stage.module_name}:main" for stage in STAGES}


def get(name):
    """The :class:`Stage` called ``name`` (``KeyError`` names the known ones)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(BY_NAME)}") from None


def stage_of_executable(executable):
    """The :class:`Stage` whose executable is ``executable`` (a name or a path)."""
    name = str(executable).rsplit("/", 1)[-1]
    if not name.startswith("inclinet-"):
        raise KeyError(f"{executable!r} is not an inclinet stage executable")
    return get(name[len("inclinet-") :])
