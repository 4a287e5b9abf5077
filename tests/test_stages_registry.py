"""The stage registry and the settings: every consumer agrees with them, every job's command line parses."""

import os
import sys
from pathlib import Path

import pytest

from inclinet import config, naming
from inclinet import stages as registry
from inclinet.stages import augment, evaluate
from workflow import dag

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def test_pyproject_console_scripts_are_the_registry():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    stage_scripts = {name: target for name, target in scripts.items() if target.startswith("inclinet.stages.")}
    assert stage_scripts == registry.CONSOLE_SCRIPTS


def test_bin_holds_one_script_and_a_link_per_stage():
    entries = {path.name: path for path in (REPO / "bin").iterdir()}
    assert set(entries) == {"inclinet-stage"} | {stage.executable for stage in registry.STAGES}
    for stage in registry.STAGES:
        link = entries[stage.executable]
        assert link.is_symlink() and os.readlink(link) == "inclinet-stage"


def test_every_stage_module_has_the_interface():
    for stage in registry.STAGES:
        module = stage.module()
        for name in ("add_arguments", "build_parser", "main", "run"):
            assert callable(getattr(module, name, None)), (stage.name, name)
        assert stage.build_parser().prog == stage.executable


def test_dag_stages_and_slots_come_from_the_registry():
    assert dag.STAGES == tuple(s.name for s in registry.STAGES if s.in_dag)
    assert dag.STAGE_SLOTS["train"] == (2, 1) and dag.STAGE_SLOTS["prep"] == (1, 0)
    with pytest.raises(KeyError, match="known: synth"):
        registry.get("resize")


def test_workflow_defaults_are_the_settings():
    workflow_config = dag.WorkflowConfig()
    for name in dag.SETTING_FIELDS:
        assert getattr(workflow_config, name) == config.default(name) == getattr(config.DEFAULTS, name)
    # Every stage flag with a setting behind it has the same default as the workflow.
    for stage in registry.STAGES:
        for action in stage.build_parser()._actions:
            # synth's --size is the size of the raw images it renders: the synthetic_size setting.
            name = "synthetic_size" if (stage.name, action.dest) == ("synth", "size") else action.dest
            if name in config.SETTINGS and not action.required:
                # None: an optional check (compress checks --size only when given).
                unchecked = action.default is None and "checked" in action.help
                assert action.default == config.default(name) or unchecked, (stage.name, name)


def _all_jobs(**overrides):
    values = dict(
        synthetic=40,
        galaxies_per_job=15,
        size=80,
        models=("model4", "model5"),
        subsamples=2,
        epochs=7,
        batch_size=16,
        lr_schedule="constant",
        n_batches=3,
        per_bin=9,
        views=4,
        seed=31,
    )
    values.update(overrides)
    workflow_config = dag.WorkflowConfig(**values)
    return workflow_config, dag.build_jobs(workflow_config)


@pytest.mark.parametrize("overrides", [{}, {"tasks": ("regression",), "subsamples": 0, "seed": 0}])
def test_every_job_parses_with_its_stage_parser_and_carries_the_workflow_values(overrides):
    workflow_config, jobs = _all_jobs(**overrides)
    expected = workflow_config.stage_values()
    parsers = {stage: registry.get(stage).build_parser() for stage in dag.STAGES}
    carried = {}
    for job in jobs:
        assert job.executable == registry.get(job.stage).executable
        args = parsers[job.stage].parse_args(job.args)  # exits (SystemExit 2) on a bad command line
        for name in expected:
            # prep and compress accept --seed but draw no random numbers: the DAG passes none.
            if hasattr(args, name) and not (name == "seed" and job.stage in ("prep", "compress")):
                value = getattr(args, name)
                wanted = expected[name]
                if name == "per_bin" and getattr(args, "task", None) == "binary":
                    # The binary task's classes get a batch as large as the regression's 9 bins.
                    wanted = dag.binary_per_class(workflow_config)
                    assert wanted == -(-9 * workflow_config.per_bin // 2)
                assert value == wanted or (name == "size" and job.stage == "synth"), (job.id, name, value)
                carried.setdefault(job.stage, set()).add(name)
        if job.stage == "synth":
            assert args.size == workflow_config.synthetic_size
        # Identity is passed, and agrees with what the file names say.
        if job.stage == "augment":
            assert args.subset == job.id.removeprefix("augment_") == augment.subset_name(args.input, args.output)
        if job.stage == "evaluate":
            passed = evaluate.describe_members(args.models, args.members)
            assert [m["name"] for m in passed] == [m["name"] for m in evaluate.describe_members(args.models)]
            assert len(passed) == len(workflow_config.models) * len(dag.training_subsets(workflow_config))
        if job.stage == "split":
            assert naming.split_report(args.size) in job.outputs
    assert {"epochs", "batch_size", "lr_schedule", "seed"} <= carried["train"]
    assert {"size", "n_batches", "per_bin", "seed"} <= carried["augment"]
    assert {"size", "subsamples", "seed"} <= carried["split"]
    assert {"views", "seed"} <= carried["evaluate"]
    assert {"size"} <= carried["prep"]


def test_binary_per_bin_sets_the_binary_batches_only():
    _, jobs = _all_jobs(binary_per_bin=5)
    per_bin = {job.id: job.args[job.args.index("-z") + 1] for job in jobs if job.stage == "augment"}
    assert per_bin.pop("augment_Binary") == "5" and set(per_bin.values()) == {"9"}


def test_binary_members_train_at_their_own_learning_rate():
    _, jobs = _all_jobs(binary_learning_rate=2e-4)
    rates = {job.id: job.args for job in jobs if job.stage == "train"}
    for job_id, args in rates.items():
        if "Binary" in job_id:
            assert args[args.index("--learning-rate") + 1] == "0.0002"
        else:
            assert "--learning-rate" not in args  # the regression members keep the stage's (or the search's) rate


def test_model5_minimum_comes_from_the_model():
    from inclinet.errors import ConfigError
    from inclinet.models import minimum_input_size

    needed = minimum_input_size("model5")
    dag.WorkflowConfig(synthetic=10, size=needed, models=("model5",)).validate()
    with pytest.raises(ConfigError, match=f"below {needed}"):
        dag.WorkflowConfig(synthetic=10, size=needed - 1, models=("model5",)).validate()
    with pytest.raises(ConfigError, match="--views"):
        dag.WorkflowConfig(synthetic=10, views=3).validate()


def test_member_identities_are_checked():
    from inclinet.errors import ConfigError

    paths = ["models/a.keras", "models/b.keras"]
    members = evaluate.describe_members(paths, ["model6:binary", "model4:2"])
    assert [(m["name"], m["task"]) for m in members] == [("model42", "regression"), ("model6-binary", "binary")]
    for bad in (["model4:0"], ["model4:0", "model9:1"], ["model4:0", "model4-1"]):
        with pytest.raises(ConfigError, match="--members"):
            evaluate.describe_members(paths, bad)
