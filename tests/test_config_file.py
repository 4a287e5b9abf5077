"""run_workflow.py --config FILE.yaml: schema validation, science apart from execution, defaults < file < flags."""

import argparse
import json

import pytest

from inclinet import config as settings
from workflow import cli
from workflow.cli import main

TINY = """\
# a tiny run
science:
  synthetic: 40
  size: 32
  epochs: 3
  bands: [g, gri]
  models: [model4]
execution:
  engine: slurm
  galaxies_per_job: 20
  retries: 1
  resources: [train.runtime=7200]
  slurm:
    partition: debug
    sbatch_options: [--qos=short]
    wait: true
"""


def _build(tmp_path, text, *flags):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    run_dir = tmp_path / "run"
    code = main(["--config", str(path), "--dry-run", "--output-dir", str(run_dir), "-q", *flags])
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else None
    return code, info


def test_file_settings_apply_and_flags_given_override_them(tmp_path):
    code, info = _build(tmp_path, TINY)
    assert code == 0
    config, engine_args = info["config"], info["engine_args"]
    assert info["engine"] == "slurm" and info["config_file"] == str((tmp_path / "run.yaml").resolve())
    assert (config["synthetic"], config["size"], config["epochs"], config["bands"]) == (40, 32, 3, ["g", "gri"])
    assert (config["galaxies_per_job"], config["retries"], config["resources"]) == (20, 1, ["train.runtime=7200"])
    assert config["batch_size"] == settings.DEFAULTS.batch_size  # not in the file: the one default
    assert engine_args["slurm_partition"] == "debug" and engine_args["slurm_sbatch_options"] == ["--qos=short"]
    assert engine_args["slurm_wait"] is True

    # flags beat the file, also a flag given with the default's value (--engine local)
    code, info = _build(
        tmp_path,
        TINY,
        "--force",
        "--epochs",
        "2",
        "--engine",
        "local",
        "--bands",
        "r",
        "--resources",
        "train.cores=1",
        "--partition",
        "other",
    )
    assert code == 0
    assert (info["engine"], info["config"]["epochs"], info["config"]["bands"]) == ("local", 2, ["r"])
    assert info["config"]["resources"] == ["train.cores=1"] and info["engine_args"]["slurm_partition"] == "other"
    assert info["config"]["size"] == 32  # still from the file


def test_file_values_beat_the_demo_preset(tmp_path):
    code, info = _build(tmp_path, "science:\n  epochs: 3\n", "--demo")
    assert code == 0 and info["config"]["epochs"] == 3 and info["config"]["size"] == cli.DEMO["size"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("science:\n  synthetic: 40\n  epochs: 0\n", "invalid science.epochs: 0; must be an integer >= 1"),
        ("science:\n  synthetic: 40\n  epochs: ten\n", "invalid science.epochs: 'ten'; must be an integer >= 1"),
        ("science:\n  synthetic: 40\n  views: 3\n", "invalid science.views: 3; must be one of 1, 2, 4, 8"),
        ("science:\n  synthetic: 40\n  bands: [g, x]\n", "invalid science.bands[1]: 'x'; must be one of g, r, i, gri"),
        ("science:\n  synthetic: 40\n  bands: [g, g]\n", "invalid science.bands: ['g', 'g']; must be a non-empty list"),
        (
            "science:\n  synthetic: 40\n  galaxies_per_job: 10\n",
            "unknown key science.galaxies_per_job (galaxies_per_job is an execution setting: put it under execution:)",
        ),
        (
            "execution:\n  epochs: 3\n",
            "unknown key execution.epochs (epochs is a science setting: put it under science:)",
        ),
        ("epochs: 3\n", "unknown key epochs (epochs is a science setting: put it under science:)"),
        ("execution:\n  engine: condor\n", "invalid execution.engine: 'condor'; must be one of local, pegasus, slurm"),
        ("execution:\n  slurm:\n    partiton: x\n", "unknown key execution.slurm.partiton; must be one of account,"),
        ("execution:\n  resources: [train.time=1]\n", "invalid execution.resources[0]: 'train.time=1'"),
        ("execution:\n  slurm:\n    wait: 1\n", "invalid execution.slurm.wait: 1; must be true or false"),
        ("science: [1\n", "not valid YAML at line 2"),
        ("- synthetic: 40\n", "must be a YAML mapping"),
        ("science: 3\n", "invalid science: 3; must be a mapping of settings"),
    ],
)
def test_bad_files_are_refused_naming_the_key_and_value(tmp_path, capsys, text, message):
    code, info = _build(tmp_path, text)
    assert code == 2 and info is None
    err = capsys.readouterr().err
    assert str(tmp_path / "run.yaml") in err and message in err, err
    assert "Traceback" not in err


def test_empty_sections_set_nothing(tmp_path):
    code, info = _build(
        tmp_path, "science:\nexecution:\n  slurm:\n", "--synthetic", "40", "--size", "32", "--models", "model4"
    )
    assert code == 0 and info["config"]["epochs"] == settings.DEFAULTS.epochs and info["engine"] == "local"


def test_missing_file_is_an_input_error(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml"), "--dry-run", "-q"]) == 2
    assert "nope.yaml: configuration file not found" in capsys.readouterr().err


def test_every_file_key_is_a_flag_of_the_workflow():
    """The file names the flags' dests: a key without a flag could never be overridden."""
    dests = set(vars(cli.build_parser().parse_args([])))
    keys = set(cli.SCIENCE_KEYS) | (set(cli.EXECUTION_KEYS) - {"slurm"}) | {f"slurm_{k}" for k in cli.SLURM_KEYS}
    assert keys <= dests, keys - dests
    assert not set(cli.SCIENCE_KEYS) & set(cli.EXECUTION_KEYS)
    # science and execution follow the settings' own split
    for name, item in settings.SETTINGS.items():
        if name in cli.SCIENCE_KEYS:
            assert item.science, name
        if name in cli.EXECUTION_KEYS:
            assert not item.science, name


def test_schema_bounds_come_from_the_settings():
    for name in ("epochs", "size", "galaxies_per_job", "retries"):
        item = settings.SETTINGS[name]
        schema = settings.setting_schema(name)
        assert schema["minimum"] == item.minimum and schema["type"] == "integer"
    assert settings.setting_schema("lr_schedule")["enum"] == list(settings.SETTINGS["lr_schedule"].choices)


def test_given_flags_are_told_from_defaults():
    assert cli._given_dests(
        ["--synthetic", "5", "--engine", "local", "--reuse", "x"], ["synthetic", "engine", "reuse", "size", "resources"]
    ) == {"synthetic", "engine", "reuse"}
    assert isinstance(cli.build_parser().parse_args([]), argparse.Namespace)
