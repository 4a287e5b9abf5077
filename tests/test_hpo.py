"""The hyper-parameter search: search space, DAG and Pegasus files, trial jobs, select, kill and resume, engines."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import build_npz
from test_catalogs import errors, validators  # noqa: F401 - the fixture is used by name
from test_slurm import engine_args, our_queue, slurm_cluster  # noqa: F401 - the fixture is used by name

from inclinet import config, hpo, naming
from inclinet import stages as registry
from inclinet.errors import ConfigError, InputError
from inclinet.stages import hpo as hpo_stage
from workflow import dag
from workflow.cli import main as workflow_main

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
N_GALAXIES = 40
SEED = 5
#: The tiny search of the tests: 2 trial jobs x 2 trials, 1 epoch each (2 in the kill test).
TINY = dict(trials=4, models=("model4", "model6"), n_batches=1, per_bin=2, seed=SEED)


def tiny_samples(folder, n=N_GALAXIES, size=SIZE):
    """The full training set's sample of every band (``samples/<TAG>_<S>x<S>_train_000.npz``), as split writes it."""
    rng = np.random.default_rng(3)
    labels = rng.integers(45, 91, n)
    pgcs = 2_000_000 + np.arange(n)
    paths = []
    for offset, band in enumerate(naming.BANDS):
        path = Path(folder) / naming.sample(size, band, "train", 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(build_npz(path, n=n, size=size, band=band, labels=labels, pgc_ids=pgcs, seed=offset))
    return paths


def trial_argv(samples, folder, job, epochs=1):
    index, count = job.split("/")
    name = f"{int(index):02d}of{int(count):02d}"
    return [
        "trial",
        "--train",
        *map(str, samples),
        "--models",
        ",".join(TINY["models"]),
        "--trials",
        str(TINY["trials"]),
        "--job",
        job,
        "--epochs",
        str(epochs),
        "-b",
        str(TINY["n_batches"]),
        "-z",
        str(TINY["per_bin"]),
        "--journal",
        str(Path(folder) / f"trials_{name}.journal"),
        "--output",
        str(Path(folder) / f"trials_{name}.json"),
        "--seed",
        str(SEED),
        "-q",
    ]


def finished(record):
    return {t["trial"]: (t["state"], t["params"], t["value"]) for t in record["trials"] if t["state"] != "FAIL"}


# -- without TensorFlow: the search space, the parameters file, the DAG ----------------------


def test_chains_are_unchanged_at_one_and_scaled_otherwise():
    from inclinet.augmentation import COLOUR_CHAIN, GRAY_CHAIN

    assert hpo.chain_parameters(1.0, 1.0) == (COLOUR_CHAIN, GRAY_CHAIN)
    colour, gray = hpo.chain_parameters(0.5, 2.0)
    assert colour.scale_range == pytest.approx((0.9, 1.1)) and gray.scale_range == pytest.approx((0.9, 1.1))
    assert colour.noise_max == 2 * COLOUR_CHAIN.noise_max and gray.noise_max == 2 * GRAY_CHAIN.noise_max
    assert hpo.chain_parameters(0.0, 0.0)[0].scale_range == (1.0, 1.0)


def test_search_space_draws_within_its_bounds_and_the_settings():
    optuna = hpo.import_optuna()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for index in range(20):
        views = ("chain", "dihedral")[index % 2]
        params = hpo.suggest(study.ask(), ("model4", "model6"), views)
        assert list(params) == [dim.name for dim in hpo.search_space(views)]
        assert params["model"] in ("model4", "model6")
        for key in hpo.TRAINING_KEYS + (hpo.AUGMENTATION_KEYS if views == "chain" else ()):
            config.check(key, params[key])  # every value the search draws is one the stages accept


def write_best(path, best, by_model=None):
    path.write_text(json.dumps({"format": hpo.FORMAT, "best": best, "by_model": by_model or {}}))
    return path


def test_training_reads_its_familys_best_trial_or_the_overall_best(tmp_path):
    params = {
        "model": "model6",
        "learning_rate": 0.002,
        "lr_schedule": "constant",
        "batch_size": 16,
        "dropout": 0.1,
        "aug_scale": 0.5,
        "aug_noise": 1.5,
    }
    best = {"trial": 3, "value": 7.5, "params": params}
    path = write_best(tmp_path / "best.json", best, {"model6": best})
    assert hpo.training_params(path, "model6")["params"] == {
        "learning_rate": 0.002,
        "lr_schedule": "constant",
        "batch_size": 16,
        "dropout": 0.1,
    }
    assert "none of this family" in hpo.training_params(path, "model4")["source"]
    assert hpo.augmentation_params(path) == (0.5, 1.5)
    bad = write_best(tmp_path / "bad.json", dict(best, params=dict(params, dropout=2.0)))
    with pytest.raises(InputError, match=r"bad\.json: invalid --dropout: 2\.0"):
        hpo.read_best(bad)
    with pytest.raises(InputError, match="no finished trial"):
        hpo.training_params(write_best(tmp_path / "none.json", None), "model4")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(InputError, match=r"junk\.json: not a readable best-parameters file"):
        hpo.read_best(tmp_path / "junk.json")


def test_dihedral_views_leave_the_chains_out_of_the_search(tmp_path):
    names = [dim.name for dim in hpo.search_space("dihedral")]
    assert "aug_scale" not in names and "aug_noise" not in names and "learning_rate" in names
    assert hpo.search_space("chain") == hpo.SEARCH_SPACE
    optuna = hpo.import_optuna()
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = hpo.suggest(trial, ("model4",), "dihedral")
    assert set(params) == set(names)
    assert set(hpo.distributions(("model4",), "dihedral")) == set(names)
    best = {"trial": 0, "value": 6.0, "params": params}
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"format": hpo.FORMAT, "search": {"regression_views": "dihedral"}, "best": best}))
    assert hpo.training_params(path, "model4")["params"]["learning_rate"] == params["learning_rate"]
    assert hpo.augmentation_params(path) == (1.0, 1.0)  # the chains as defined (unused with dihedral views)
    # A chain search's file must carry the strengths.
    with pytest.raises(InputError, match="lacks aug_scale"):
        hpo.read_best(write_best(tmp_path / "chain.json", best))
    with pytest.raises(ConfigError, match="regression.views"):
        hpo.search_space("bilinear")


def fake_trials_files(folder, scores, count=2, models=("model4", "model6")):
    """The trials files of ``count`` jobs of a search whose trial n scored ``scores[n]`` (None: pruned).

    Trial 0 also has a failed attempt before its finished one (a stopped run).
    """
    optuna = hpo.import_optuna()
    n_trials = len(scores)
    paths = []
    for index in range(1, count + 1):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=index))
        for number in hpo.shard_range(n_trials, index, count):
            attempts = 2 if number == 0 else 1
            for attempt in range(attempts):
                trial = study.ask()
                trial.set_user_attr("trial", number)
                hpo.suggest(trial, models)
                trial.report(20.0 - number, 1)
                if attempt < attempts - 1:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                elif scores[number] is None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(trial, scores[number])
        search = dict(
            hpo._search_identity(
                models=models,
                trials=n_trials,
                index=index,
                count=count,
                epochs=1,
                n_batches=1,
                per_bin=2,
                size=SIZE,
                seed=SEED,
                foreign=None,
            )
        )
        record = {
            "format": hpo.FORMAT,
            "search": search,
            "trials": [hpo._trial_record(optuna, t, index) for t in study.trials],
        }
        path = Path(folder) / naming.hpo_trials(index, count)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        paths.append(path)
    return paths


def test_select_merges_the_jobs_and_the_report_shows_the_search(tmp_path):
    scores = [9.0, None, 7.5, 8.0, 6.0, 10.0]
    files = fake_trials_files(tmp_path, scores)
    out = {key: tmp_path / name for key, name in (("best", "best.json"), ("study", "s.journal"), ("summary", "s.json"))}
    summary = hpo.select(inputs=files, **out)
    assert [t["trial"] for t in summary["trials"]] == list(range(6))
    assert [t["state"] for t in summary["trials"]].count("PRUNED") == 1
    assert [t["trial"] for t in summary["failed_attempts"]] == [0]
    best = hpo.read_best(out["best"])
    assert (best["best"]["trial"], best["best"]["value"]) == (4, 6.0)
    for model, entry in best["by_model"].items():
        assert entry["params"]["model"] == model
        assert entry["value"] == min(
            v for n, v in enumerate(scores) if v is not None and summary["trials"][n]["params"]["model"] == model
        )
    assert summary["importances"] and sum(summary["importances"].values()) == pytest.approx(1)
    section = hpo.html_section(summary)
    assert "6 trial(s) in 2 job(s)" in section and "1 pruned" in section and "1 failed attempt(s)" in section
    assert "PED-ANOVA" in section
    # The same trials give the same files (the importances draw no random numbers).
    again = hpo.select(
        inputs=files, best=tmp_path / "b2.json", study=tmp_path / "s2.journal", summary=tmp_path / "s2.json"
    )
    assert again["importances"] == summary["importances"]
    # Too few complete trials: a clear note instead of importances.
    few = fake_trials_files(tmp_path / "few", [5.0, None], count=1)
    small = hpo.select(
        inputs=few, best=tmp_path / "b3.json", study=tmp_path / "s3.journal", summary=tmp_path / "s3.json"
    )
    assert small["importances"] is None and "at least 4 complete trials; this search has 1" in small["importance_note"]
    # A trial that never finished names the job to run again.
    broken = json.loads(files[1].read_text())
    broken["trials"] = [t for t in broken["trials"] if t["trial"] != 5]
    files[1].write_text(json.dumps(broken))
    with pytest.raises(InputError, match=r"trial\(s\) 5 did not finish; run trial job\(s\) 2/2 again"):
        hpo.select(inputs=files, best=tmp_path / "b4.json", study=tmp_path / "s4.journal", summary=tmp_path / "s4.json")


def test_foreign_set_is_the_accepted_galaxies_of_a_raw_folder(tiny_universe, tmp_path):
    files = hpo._foreign_samples(Path(tiny_universe), SIZE, tmp_path / "foreign")
    bands = set()
    for path in files:
        arrays = np.load(path)
        assert arrays["images"].shape[1:] == (SIZE, SIZE, 3) and len(arrays["images"]) > 0
        assert ((arrays["labels"] >= 45) & (arrays["labels"] <= 90)).all()
        bands.add(str(arrays["band"]))
    assert "gri" in bands
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a raw-layout folder"):
        hpo._foreign_samples(tmp_path / "empty", SIZE, tmp_path / "nothing")


def test_an_empty_journal_is_a_new_study(tmp_path):
    # Pegasus stages an empty placeholder as the checkpoint before a trial job's first attempt.
    optuna = hpo.import_optuna()
    (tmp_path / "j.journal").write_text("")
    _, storage = hpo._journal_storage(tmp_path / "j.journal")
    assert optuna.create_study(study_name="x", storage=storage, load_if_exists=True).trials == []


def small_config(**overrides):
    values = dict(
        synthetic=40,
        galaxies_per_job=20,
        size=32,
        models=("model4", "model6"),
        subsamples=1,
        epochs=2,
        n_batches=1,
        per_bin=2,
        views=1,
        seed=SEED,
    )
    values.update(overrides)
    return dag.WorkflowConfig(**values)


def test_without_a_search_the_dag_is_the_same():
    plain = dag.build_jobs(small_config())
    assert not any(job.stage == "hpo" or any("hpo" in str(a) for a in job.args + job.inputs) for job in plain)
    # Search settings that take effect only with --hpo-trials change nothing.
    other = dag.build_jobs(small_config(hpo_parallel=3, hpo_epochs=7))
    assert [dataclasses.asdict(j) for j in other] == [dataclasses.asdict(j) for j in plain]
    # The search adds its jobs and two flags, nothing else: taking them out of a searched DAG
    # gives back the plain one, job for job and byte for byte.
    searched = dag.build_jobs(small_config(hpo_trials=4, hpo_parallel=2))
    stripped = []
    for job in searched:
        if job.stage == "hpo":
            continue
        args = list(job.args)
        for flag in ("--hpo-params", "--hpo-summary"):
            if flag in args:
                del args[args.index(flag) : args.index(flag) + 2]
        inputs = [lfn for lfn in job.inputs if not lfn.startswith(naming.HPO_DIR + "/")]
        stripped.append(dataclasses.replace(job, args=args, inputs=inputs))
    dag.infer_parents(stripped)
    assert [dataclasses.asdict(j) for j in stripped] == [dataclasses.asdict(j) for j in plain]
    assert dag.expected_job_counts(small_config(), 40) == {
        "synth": 3,
        "prep": 8,
        "compress": 4,
        "split": 1,
        "augment": 3,
        "train": 6,
        "evaluate": 1,
    }


def test_search_jobs_sit_between_split_and_the_tuned_members():
    config_ = small_config(hpo_trials=6, hpo_parallel=2, hpo_epochs=2)
    jobs = {job.id: job for job in dag.build_jobs(config_)}
    counts = dag.expected_job_counts(config_, 40)
    assert counts["hpo"] == 3 and len(jobs) == sum(counts.values())
    trials = [jobs[f"hpo_trial_{k:02d}of02"] for k in (1, 2)]
    for k, job in enumerate(trials, 1):
        assert job.parents == ["split"] and job.checkpoint == naming.hpo_journal(k, 2)
        assert job.outputs == [naming.hpo_trials(k, 2)] and (job.cores, job.gpus) == (2, 1)
        assert job.inputs == [naming.sample(32, band, "train", 0) for band in config_.bands]
    select = jobs["hpo_select"]
    assert select.parents == [job.id for job in trials] and (select.cores, select.gpus) == (1, 0)
    assert select.outputs == [naming.HPO_BEST_PARAMS, naming.HPO_STUDY, naming.HPO_SUMMARY]
    # Regression augmentation and training read the best parameters; the binary member does not.
    for job_id in ("augment_Uset_000", "augment_Uset_001", "train_Uset_000_model4", "train_Uset_001_model6"):
        assert "hpo_select" in jobs[job_id].parents and naming.HPO_BEST_PARAMS in jobs[job_id].inputs
        assert jobs[job_id].args[-2:] == ["--hpo-params", naming.HPO_BEST_PARAMS]
    for job_id in ("augment_Binary", "train_Binary_model4"):
        assert "hpo_select" not in jobs[job_id].parents and "--hpo-params" not in jobs[job_id].args
    assert naming.HPO_SUMMARY in jobs["evaluate"].inputs and "--hpo-summary" in jobs["evaluate"].args
    # Every command line parses with its stage's parser and carries the search's settings.
    parser = registry.get("hpo").build_parser()
    for k, job in enumerate(trials, 1):
        args = parser.parse_args(job.args)
        assert (args.command, args.job, args.hpo_trials, args.hpo_epochs) == ("trial", f"{k}/2", 6, 2)
        assert args.models == ("model4", "model6") and args.journal == job.checkpoint
    assert parser.parse_args(select.args).input == [job.outputs[0] for job in trials]
    registry.get("train").build_parser().parse_args(jobs["train_Uset_000_model4"].args)
    registry.get("augment").build_parser().parse_args(jobs["augment_Uset_000"].args)
    registry.get("evaluate").build_parser().parse_args(jobs["evaluate"].args)


def test_search_flags_are_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--hpo-parallel"):
        small_config(hpo_trials=2, hpo_parallel=3).validate()
    with pytest.raises(ConfigError, match="--hpo-epochs"):
        small_config(hpo_trials=2, hpo_epochs=0).validate()
    flags = ["--synthetic", "20", "--size", "32", "--models", "model4", "--dry-run", "-q"]
    assert workflow_main([*flags, "--hpo-trials", "2", "--hpo-parallel", "3", "--output-dir", str(tmp_path / "a")]) == 2
    assert "invalid --hpo-parallel: 3; must be at most --hpo-trials (2)" in capsys.readouterr().err
    # The search's settings from a --config file (science section), as the flags.
    settings = tmp_path / "run.yaml"
    settings.write_text("science:\n  hpo_trials: 3\n  hpo_parallel: 3\n  hpo_epochs: 1\n")
    assert workflow_main([*flags, "--config", str(settings), "--output-dir", str(tmp_path / "b")]) == 0
    jobs = dag.load_jobs(tmp_path / "b")
    assert [job.id for job in jobs if job.stage == "hpo"] == [f"hpo_trial_{k:02d}of03" for k in (1, 2, 3)] + [
        "hpo_select"
    ]
    settings.write_text("science:\n  hpo_trials: -1\n")
    assert workflow_main([*flags, "--config", str(settings), "--output-dir", str(tmp_path / "c")]) == 2
    assert "invalid science.hpo_trials: -1; must be an integer >= 0" in capsys.readouterr().err


def foreign_folder(folder, n=3):
    """A raw-layout folder as bench/foreign_universe.py writes it (the DAG reads names, not pixels)."""
    folder = Path(folder)
    (folder / "galaxies").mkdir(parents=True)
    (folder / "catalog.csv").write_text("pgc|inc\n")
    for pgc in range(5_000_000, 5_000_000 + n):
        for band in ("g", "r", "i"):
            (folder / "galaxies" / f"pgc{pgc}_d25x2_rot_{band}.png").write_bytes(b"")
        (folder / "galaxies" / f"pgc{pgc}_d25x2_rot_gri.sdss.jpg").write_bytes(b"")
    (folder / "galaxies" / ".DS_Store").write_bytes(b"")
    return folder


def test_the_foreign_set_reaches_every_trial_job_and_nothing_else(tmp_path):
    folder = foreign_folder(tmp_path / "foreign")
    searched = dag.build_jobs(small_config(hpo_trials=4, hpo_parallel=2))
    jobs = dag.build_jobs(small_config(hpo_trials=4, hpo_parallel=2, hpo_foreign=str(folder)))
    parser = registry.get("hpo").build_parser()
    trials = [job for job in jobs if job.id.startswith("hpo_trial_")]
    assert len(trials) == 2
    for job in trials:
        # An absolute path, whatever the working directory of the job.
        assert job.args[-2:] == ["--foreign", str(folder.resolve())]
        assert parser.parse_args(job.args).hpo_foreign == str(folder.resolve())
    # Only the trial jobs change, by those two words; without the flag the DAG is as before.
    stripped = [dataclasses.replace(job, args=job.args[:-2]) if job in trials else job for job in jobs]
    assert [dataclasses.asdict(j) for j in stripped] == [dataclasses.asdict(j) for j in searched]


def test_the_trial_command_hands_its_foreign_folder_to_the_search(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(hpo, "run_trials", lambda **kwargs: seen.update(kwargs))
    argv = trial_argv(["a.npz", "b.npz"], tmp_path, "1/2")
    assert hpo_stage.main(argv) == 0 and seen["foreign"] is None
    assert hpo_stage.main([*argv, "--foreign", "hpo/foreign"]) == 0 and seen["foreign"] == "hpo/foreign"


def test_every_job_of_a_search_with_a_foreign_set_parses_with_its_stage_parser(tmp_path):
    from test_stages_registry import test_every_job_parses_with_its_stage_parser_and_carries_the_workflow_values

    folder = str(foreign_folder(tmp_path / "foreign").resolve())
    test_every_job_parses_with_its_stage_parser_and_carries_the_workflow_values(
        {"hpo_trials": 4, "hpo_parallel": 2, "hpo_epochs": 2, "hpo_foreign": folder}
    )


def test_a_bad_foreign_folder_is_refused_at_build(tmp_path, capsys):
    flags = ["--synthetic", "20", "--size", "32", "--models", "model4", "--dry-run", "-q"]
    flags += ["--hpo-trials", "2"]
    (tmp_path / "no_catalog" / "galaxies").mkdir(parents=True)
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "catalog.csv").write_text("pgc|inc\n")
    (tmp_path / "no_images" / "galaxies").mkdir()
    for name, message in (
        ("missing", "folder not found"),
        ("no_catalog", "no catalog.csv there"),
        ("no_images", "no galaxies/ there"),
    ):
        run_dir = tmp_path / f"run_{name}"
        assert workflow_main([*flags, "--hpo-foreign", str(tmp_path / name), "--output-dir", str(run_dir)]) == 2
        assert f"--hpo-foreign {tmp_path / name}: {message}" in capsys.readouterr().err
        assert not run_dir.exists()  # refused before anything is written
    good = foreign_folder(tmp_path / "good")
    plain = ["--synthetic", "20", "--size", "32", "--models", "model4", "--dry-run", "-q"]
    assert workflow_main([*plain, "--hpo-foreign", str(good), "--output-dir", str(tmp_path / "x")]) == 2
    assert "give --hpo-trials N too" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--hpo-foreign"):
        small_config(hpo_trials=2, hpo_foreign="").validate()
    # From a --config file (science section), as the flag.
    settings = tmp_path / "run.yaml"
    settings.write_text(f"science:\n  hpo_trials: 2\n  hpo_foreign: {good}\n")
    assert workflow_main([*plain, "--config", str(settings), "--output-dir", str(tmp_path / "y")]) == 0
    trial = next(job for job in dag.load_jobs(tmp_path / "y") if job.id == "hpo_trial_01of01")
    assert trial.args[-2:] == ["--foreign", str(good.resolve())]
    settings.write_text("science:\n  hpo_trials: 2\n  hpo_foreign: 3\n")
    assert workflow_main([*plain, "--config", str(settings), "--output-dir", str(tmp_path / "z")]) == 2
    assert "invalid science.hpo_foreign: 3; must be a folder path" in capsys.readouterr().err


def test_pegasus_stages_the_foreign_set_to_every_trial_job(tmp_path, validators):  # noqa: F811
    folder = foreign_folder(tmp_path / "foreign")
    run_dir = tmp_path / "run"
    flags = ["--synthetic", "40", "--galaxies-per-job", "20", "--size", "32", "--models", "model4"]
    flags += ["--hpo-trials", "4", "--hpo-parallel", "2", "--hpo-foreign", str(folder), "--engine", "pegasus"]
    assert workflow_main([*flags, "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    documents = {name: yaml.safe_load((run_dir / name).read_text()) for name in ("workflow.yml", "replicas.yml")}
    for name, document in documents.items():
        assert errors(validators[name], document) == [], name
    # jobs.json (the local and SLURM engines) keeps the absolute path.
    saved = {job.id: job for job in dag.load_jobs(run_dir)}
    assert saved["hpo_trial_01of02"].args[-2:] == ["--foreign", str(folder.resolve())]
    expected = [f"{dag.HPO_FOREIGN_DIR}/catalog.csv"] + sorted(
        f"{dag.HPO_FOREIGN_DIR}/galaxies/{path.name}" for path in (folder / "galaxies").glob("pgc*")
    )
    assert len(expected) == 1 + 4 * 3
    jobs = {job["id"]: job for job in documents["workflow.yml"]["jobs"]}
    for k in (1, 2):
        job = jobs[f"hpo_trial_{k:02d}of02"]
        inputs = [use["lfn"] for use in job["uses"] if use["type"] == "input"]
        assert [lfn for lfn in inputs if lfn.startswith(dag.HPO_FOREIGN_DIR + "/")] == expected
        assert job["arguments"][-2:] == ["--foreign", dag.HPO_FOREIGN_DIR]
        assert str(folder) not in json.dumps(job)  # nothing of the submit host's paths on the node
    others = [job for job_id, job in jobs.items() if not job_id.startswith("hpo_trial_")]
    assert not any(use["lfn"].startswith(dag.HPO_FOREIGN_DIR) for job in others for use in job["uses"])
    # One regex replica maps every declared file to the folder on the submit host.
    (entry,) = [e for e in documents["replicas.yml"]["replicas"] if e["lfn"].startswith(dag.HPO_FOREIGN_DIR)]
    assert entry["regex"] is True and entry["pfns"][0]["site"] == "local"
    pattern, pfn = re.compile(entry["lfn"]), entry["pfns"][0]["pfn"]
    for lfn in expected:
        path = Path(pfn.removeprefix("file://").replace("[1]", pattern.fullmatch(lfn).group(1)))
        assert path == folder.resolve() / lfn.removeprefix(dag.HPO_FOREIGN_DIR + "/") and path.is_file()
    # Without the flag the Pegasus files are as before.
    plain_dir = tmp_path / "plain"
    plain = [flag for flag in flags if flag not in ("--hpo-foreign", str(folder))]
    assert workflow_main([*plain, "--output-dir", str(plain_dir), "--dry-run", "-q"]) == 0
    assert "foreign" not in (plain_dir / "workflow.yml").read_text()
    assert "foreign" not in (plain_dir / "replicas.yml").read_text()


def test_pegasus_files_declare_the_journal_as_each_trial_jobs_checkpoint(tmp_path, validators):  # noqa: F811
    run_dir = tmp_path / "run"
    flags = ["--synthetic", "40", "--galaxies-per-job", "20", "--size", "32", "--models", "model4"]
    flags += ["--hpo-trials", "4", "--hpo-parallel", "2", "--hpo-epochs", "1", "--engine", "pegasus"]
    assert workflow_main([*flags, "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    documents = {name: yaml.safe_load((run_dir / name).read_text()) for name in ("workflow.yml", "replicas.yml")}
    for name, document in documents.items():
        assert errors(validators[name], document) == [], name
    jobs = {job["id"]: job for job in documents["workflow.yml"]["jobs"]}
    for k in (1, 2):
        uses = {use["lfn"]: use for use in jobs[f"hpo_trial_{k:02d}of02"]["uses"]}
        journal = uses[naming.hpo_journal(k, 2)]
        assert journal["type"] == "checkpoint" and journal["stageOut"] is True
        assert uses[naming.hpo_trials(k, 2)]["stageOut"] is True  # the search's results are kept
    select = {use["lfn"]: use for use in jobs["hpo_select"]["uses"]}
    assert all(select[lfn]["type"] == "input" for lfn in (naming.hpo_trials(1, 2), naming.hpo_trials(2, 2)))
    assert select[naming.HPO_BEST_PARAMS]["registerReplica"] is True
    # Pegasus finds an (empty) journal before a trial job's first attempt.
    replicas = {entry["lfn"]: entry for entry in documents["replicas.yml"]["replicas"]}
    placeholder = Path(replicas[naming.hpo_journal(1, 2)]["pfns"][0]["pfn"].removeprefix("file://"))
    assert placeholder.is_file() and placeholder.stat().st_size == 0
    assert "inclinet-hpo" in (run_dir / "transformations.yml").read_text()


@pytest.mark.pegasus
def test_real_planner_plans_the_search(tmp_path, monkeypatch):
    if not (shutil.which("pegasus-plan") and shutil.which("condor_submit_dag")):
        message = "pegasus-plan and the HTCondor stand-ins are not on PATH (see ../shared/pegasus-planner)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install them (.ci/run)")
        pytest.skip(message)
    if shutil.which("condor_submit"):
        pytest.skip("HTCondor is installed here: these tests would submit")
    from workflow.engines import pegasus

    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    flags = ["--synthetic", "30", "--galaxies-per-job", "10", "--size", "64", "--models", "model4"]
    flags += ["--hpo-trials", "4", "--hpo-parallel", "2", "--engine", "pegasus", "--output-dir", str(run_dir), "-q"]
    assert workflow_main(flags) == 0
    submit_dir = pegasus.find_submit_dir(run_dir)
    brain = pegasus.read_braindump(submit_dir)
    lines = (submit_dir / brain["dag"]).read_text().splitlines()
    planned = {line.split()[1] for line in lines if line.startswith("JOB ")}
    assert {"inclinet-hpo_hpo_trial_01of02", "inclinet-hpo_hpo_trial_02of02", "inclinet-hpo_hpo_select"} <= planned
    edges = {tuple(line.split()[1:4:2]) for line in lines if line.startswith("PARENT ")}
    assert ("inclinet-hpo_hpo_trial_01of02", "inclinet-hpo_hpo_select") in edges
    (sub,) = submit_dir.glob("**/inclinet-hpo_hpo_trial_01of02.sub")
    assert "trials_01of02.journal" in sub.read_text()  # the checkpoint travels with every attempt


@pytest.mark.pegasus
def test_real_planner_stages_the_foreign_set_into_each_trial_jobs_directory(tmp_path, monkeypatch):
    if not (shutil.which("pegasus-plan") and shutil.which("condor_submit_dag")):
        message = "pegasus-plan and the HTCondor stand-ins are not on PATH (see ../shared/pegasus-planner)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install them (.ci/run)")
        pytest.skip(message)
    if shutil.which("condor_submit"):
        pytest.skip("HTCondor is installed here: these tests would submit")
    from workflow.engines import pegasus

    monkeypatch.setenv("HOME", str(tmp_path))
    folder = foreign_folder(tmp_path / "foreign", n=2)
    run_dir = tmp_path / "run"
    flags = ["--synthetic", "30", "--galaxies-per-job", "10", "--size", "64", "--models", "model4"]
    flags += ["--hpo-trials", "4", "--hpo-parallel", "2", "--hpo-foreign", str(folder)]
    assert workflow_main([*flags, "--engine", "pegasus", "--output-dir", str(run_dir), "-q"]) == 0
    submit_dir = pegasus.find_submit_dir(run_dir)
    catalog = f"{dag.HPO_FOREIGN_DIR}/catalog.csv"
    for k in (1, 2):
        (sub,) = submit_dir.glob(f"**/inclinet-hpo_hpo_trial_{k:02d}of02.sub")
        (script,) = submit_dir.glob(f"**/inclinet-hpo_hpo_trial_{k:02d}of02.sh")
        transferred = next(line for line in sub.read_text().splitlines() if line.startswith("transfer_input_files"))
        image = f"{dag.HPO_FOREIGN_DIR}/galaxies/pgc5000001_d25x2_rot_gri.sdss.jpg"
        assert catalog in transferred and image in transferred
        # pegasus-lite puts each file at its LFN in the job directory, where --foreign hpo/foreign finds it.
        text = script.read_text()
        assert f"$PWD/{catalog}" in text and f"--foreign {dag.HPO_FOREIGN_DIR}" in text
    # The files are staged in from the folder on the submit host.
    staged = "".join(path.read_text() for path in submit_dir.glob("**/stage_in_*.in"))
    assert f"file://{folder.resolve()}/catalog.csv" in staged


# -- with TensorFlow: trial jobs, select, resume, the engines ----------------------------------


@pytest.mark.slow
def test_two_trial_jobs_select_and_a_killed_job_resumes_to_the_same_trials(tmp_path):
    samples = tiny_samples(tmp_path / "data")
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "inclinet.stages.hpo", *trial_argv(samples, killed, "1/2", epochs=2)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = killed / "trials_01of02.journal"
    optuna = hpo.import_optuna()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if journal.is_file():
                _, storage = hpo._journal_storage(journal)
                names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
                study = optuna.load_study(study_name=names[0], storage=storage) if names else None
                # Trial 0 finished and trial 1 started: kill it in the middle of trial 1.
                if study and [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]:
                    break
            time.sleep(0.3)
        assert process.poll() is None, process.stderr.read()[-2000:]
        process.send_signal(signal.SIGKILL)  # no handler runs: the trial it was in stays "running"
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    # Run again: the finished trial is kept, the abandoned one is marked failed and run again.
    assert hpo_stage.main(trial_argv(samples, killed, "1/2", epochs=2)) == 0
    resumed = json.loads((killed / "trials_01of02.json").read_text())
    assert [t["state"] for t in resumed["trials"]].count("FAIL") == 1
    assert sorted(finished(resumed)) == [0, 1]
    # An uninterrupted run of the same job gives the same trials, parameters and scores.
    assert hpo_stage.main(trial_argv(samples, reference, "1/2", epochs=2)) == 0
    clean = json.loads((reference / "trials_01of02.json").read_text())
    assert [t["state"] for t in clean["trials"]] == ["COMPLETE", "COMPLETE"]
    for number, (state, params, value) in finished(clean).items():
        again = finished(resumed)[number]
        assert again[:2] == (state, params) and again[2] == pytest.approx(value, rel=1e-5)

    assert hpo_stage.main(trial_argv(samples, reference, "2/2", epochs=2)) == 0
    # A job of another search is refused, naming the journal.
    other = trial_argv(samples, reference, "2/2", epochs=1)
    assert hpo_stage.main(other) == 2
    files = [reference / "trials_01of02.json", reference / "trials_02of02.json"]
    out = tmp_path / "hpo"
    argv = ["select", "-i", *map(str, files), "--best", str(out / "best.json"), "--study", str(out / "study.journal")]
    assert hpo_stage.main([*argv, "--summary", str(out / "search.json"), "--seed", str(SEED), "-q"]) == 0
    summary = hpo.read_summary(out / "search.json")
    assert [t["trial"] for t in summary["trials"]] == [0, 1, 2, 3] and summary["jobs"] == 2
    scores = {t["trial"]: t["value"] for t in summary["trials"] if t["state"] == "COMPLETE"}
    best = hpo.read_best(out / "best.json")
    assert best["best"]["value"] == min(scores.values())
    # Four complete trials: enough for the importances, which name searched parameters and add up to 1.
    assert set(summary["importances"]) <= {dim.name for dim in hpo.SEARCH_SPACE}
    assert sum(summary["importances"].values()) == pytest.approx(1)
    # The merged study is one Optuna study in one journal file, with every trial.
    _, storage = hpo._journal_storage(out / "study.journal")
    study = optuna.load_study(study_name=hpo.STUDY_NAME, storage=storage)
    assert sorted(t.user_attrs["trial"] for t in study.trials) == [0, 1, 2, 3]
    assert "Hyper-parameter search" in hpo.html_section(summary)
    # Select refuses an incomplete set of trial jobs.
    with pytest.raises(InputError, match="job 1/2"):
        hpo.select(inputs=files[:1], best=out / "b.json", study=out / "s.journal", summary=out / "s.json")


@pytest.mark.slow
def test_tiny_workflow_with_a_search_on_the_local_engine(tmp_path):
    run_dir = tmp_path / "run"
    flags = ["--synthetic", "24", "--synthetic-size", "48", "--size", "32", "--bands", "g,gri"]
    flags += ["--models", "model4", "--tasks", "regression", "--subsamples", "0", "--galaxies-per-job", "24"]
    flags += ["--epochs", "1", "--n-batches", "1", "--per-bin", "2", "--batch-size", "16", "--views", "1"]
    flags += ["--hpo-trials", "4", "--hpo-parallel", "2", "--hpo-epochs", "1", "--max-parallel", "2"]
    flags += ["--regression-views", "chain"]  # the search also tunes the chains' strengths
    assert workflow_main([*flags, "--seed", str(SEED), "--output-dir", str(run_dir), "-q"]) == 0
    data = run_dir / "data"
    best = hpo.read_best(data / naming.HPO_BEST_PARAMS)
    chosen = best["by_model"]["model4"]["params"]
    metrics = json.loads((data / naming.training_metrics("model4", 0)).read_text())
    assert metrics["batch_size"] == min(chosen["batch_size"], metrics["train_images_per_epoch"])
    assert (metrics["learning_rate"], metrics["dropout"]) == (chosen["learning_rate"], chosen["dropout"])
    assert metrics["hpo"]["trial"] == best["by_model"]["model4"]["trial"]
    augment_log = (run_dir / "logs" / "augment_Uset_000.log").read_text()
    assert "augmentation strength from hpo/best_params.json" in augment_log
    report = (data / "evaluation" / "report.html").read_text()
    assert "Hyper-parameter search" in report and "4 trial(s) in 2 job(s)" in report
    assert json.loads((data / "evaluation" / "metrics.json").read_text())["hpo"]["best"] == best["best"]


@pytest.mark.slurm
@pytest.mark.slow
def test_search_under_slurm_with_a_trial_job_cancelled_and_resumed(slurm_cluster, tmp_path):  # noqa: F811
    from workflow.engines import slurm

    samples = tiny_samples(tmp_path / "inputs")
    search = small_config(models=("model4",), hpo_trials=4, hpo_parallel=2, hpo_epochs=2, size=SIZE)
    jobs = dag.infer_parents(dag._search_jobs(search, N_GALAXIES))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dag.save_jobs(run_dir, jobs)
    (run_dir / "run.json").write_text(json.dumps({"format_version": 1, "engine": "slurm"}))
    replicas = [
        {"lfn": naming.sample(SIZE, band, "train", 0), "pfns": [{"site": "local", "pfn": f"file://{path}"}]}
        for band, path in zip(naming.BANDS, samples)
    ]
    (run_dir / "replicas.yml").write_text(yaml.safe_dump({"pegasus": "5.0.4", "replicas": replicas}))
    # small requests, no GPU: both trial jobs fit the CI node at once
    options = ["--sbatch-option=--mem=1500M", "--sbatch-option=--cpus-per-task=1", "--request-gpus", "no"]
    assert slurm.run(run_dir, jobs, engine_args(*options)) == 0
    optuna = hpo.import_optuna()
    journal = run_dir / "data" / naming.hpo_journal(1, 2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if journal.is_file():
            _, storage = hpo._journal_storage(journal)
            summaries = optuna.get_all_study_summaries(storage)
            study = optuna.load_study(study_name=summaries[0].study_name, storage=storage) if summaries else None
            # Trial 0 finished and trial 1 started: stop the job in the middle of trial 1.
            if study and [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]:
                break
        time.sleep(0.3)
    else:
        pytest.fail("trial job 1/2 did not reach its second trial within 300 s")
    first = slurm.submissions(run_dir)["hpo_trial_01of02"]
    subprocess.run(["scancel", first], check=True)  # SIGTERM through the wrapper: exit 3, trials kept
    exit_record = run_dir / "state" / "exit" / "hpo_trial_01of02.json"
    deadline = time.monotonic() + 120
    # SLURM lists the job as ended before its wrapper has written the exit record (the trial
    # saves its study first): wait for both.
    while time.monotonic() < deadline and (first in our_queue(run_dir) or not exit_record.is_file()):
        time.sleep(1)
    states = {k: v.state for k, v in slurm.collect_status(run_dir, jobs).items()}
    assert states["hpo_trial_01of02"] == "failed" and states["hpo_select"] == "blocked", states
    record = json.loads(exit_record.read_text())
    assert (record["exit_code"], record["signal"]) == (hpo.EXIT_INTERRUPTED, "TERM")
    assert workflow_main(["resume", str(run_dir), "--wait", "--poll-interval", "1", "--wait-timeout", "400"]) == 0
    assert {s.state for s in slurm.collect_status(run_dir, jobs).values()} == {"done"}
    trials = json.loads((run_dir / "data" / naming.hpo_trials(1, 2)).read_text())["trials"]
    assert sorted(t["trial"] for t in trials if t["state"] != "FAIL") == [0, 1]
    # The attempt the stop interrupted is kept as failed, and trial 1 ran again.
    assert [(t["trial"], t["user_attrs"].get("interrupted")) for t in trials if t["state"] == "FAIL"] == [(1, True)]
    summary = hpo.read_summary(run_dir / "data" / naming.HPO_SUMMARY)
    assert [t["trial"] for t in summary["trials"]] == [0, 1, 2, 3]
    assert hpo.read_best(run_dir / "data" / naming.HPO_BEST_PARAMS)["best"] is not None
