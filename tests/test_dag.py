"""The DAG builder: job counts, edges, files, resources, real-data inputs, and the build CLI."""

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from inclinet import naming
from inclinet.catalog import Galaxy, write_catalog
from inclinet.errors import ConfigError
from workflow import dag
from workflow.cli import main
from workflow.engines.common import load_replicas, resolve_replica

REPO = Path(__file__).resolve().parents[1]


def synthetic(**overrides):
    values = dict(synthetic=60, galaxies_per_job=25, size=64, models=("model4", "model6"), subsamples=1)
    values.update(overrides)
    return dag.WorkflowConfig(**values)


def stage_counts(jobs):
    return dict(Counter(job.stage for job in jobs))


def test_counts_of_one_combination_by_hand():
    jobs = dag.build_jobs(synthetic())
    # 60 galaxies / 25 per job -> 3 chunks; 4 bands; subsets Uset_000, Uset_001, Binary; 2 models.
    assert stage_counts(jobs) == {
        "synth": 4,
        "prep": 12,
        "compress": 4,
        "split": 1,
        "augment": 3,
        "train": 6,
        "evaluate": 1,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"synthetic": 7, "galaxies_per_job": 100},
        {"synthetic": 101, "galaxies_per_job": 10, "bands": ("gri",), "subsamples": 0},
        {
            "bands": ("g", "gri"),
            "tasks": ("regression",),
            "subsamples": 3,
            "models": ("model4", "model5", "model6"),
            "size": 128,
        },
        {"synthetic": 50, "galaxies_per_job": 50, "tasks": ("regression", "binary"), "subsamples": 2},
    ],
)
def test_counts_follow_the_formula(overrides):
    config = synthetic(**overrides)
    jobs = dag.build_jobs(config)
    chunks = -(-config.synthetic // config.galaxies_per_job)
    subsets = (config.subsamples + 1 if "regression" in config.tasks else 0) + ("binary" in config.tasks)
    expected = {
        "synth": 1 + chunks,
        "prep": len(config.bands) * chunks,
        "compress": len(config.bands),
        "split": 1,
        "augment": subsets,
        "train": subsets * len(config.models),
        "evaluate": 1,
    }
    assert stage_counts(jobs) == expected
    assert expected == dag.expected_job_counts(config, config.synthetic)


def test_edges_ids_and_files_are_consistent():
    jobs = dag.build_jobs(synthetic())
    ids = [job.id for job in jobs]
    assert len(set(ids)) == len(ids)
    producer = {lfn: job.id for job in jobs for lfn in job.outputs}
    position = {job_id: i for i, job_id in enumerate(ids)}
    for job in jobs:
        # Synthetic runs have no raw inputs: every input comes from a parent, listed in parents.
        assert all(lfn in producer for lfn in job.inputs), job.id
        assert set(job.parents) == {producer[lfn] for lfn in job.inputs}, job.id
        assert all(position[p] < position[job.id] for p in job.parents)
        # File arguments on the command line are declared files.
        for arg in job.args:
            if arg.endswith((".npz", ".keras", ".json")) and arg != job.checkpoint:
                assert arg in job.inputs or arg in job.outputs, (job.id, arg)
    by_id = {job.id: job for job in jobs}
    assert by_id["prep_RGB_0002"].parents == ["synth_catalog", "synth_0002"]
    assert by_id["compress_g"].parents == ["prep_g_0001", "prep_g_0002", "prep_g_0003"]
    assert set(by_id["evaluate"].parents) == {j.id for j in jobs if j.stage == "train"} | {"split"}
    assert naming.bundle_manifest() in by_id["evaluate"].outputs
    assert "bundle/model41.keras" in by_id["evaluate"].outputs
    assert "bundle/model6-binary.keras" in by_id["evaluate"].outputs


def test_chunks_cover_every_galaxy_once():
    config = synthetic(synthetic=53, galaxies_per_job=10, bands=("g",))
    jobs = dag.build_jobs(config)
    images = [lfn for job in jobs if job.stage == "prep" for lfn in job.inputs if lfn != dag.RAW_CATALOG]
    assert len(images) == 53 and len(set(images)) == 53
    rendered = [lfn for job in jobs if job.id.startswith("synth_0") for lfn in job.outputs]
    assert sorted(rendered) == sorted(images)


def test_training_jobs_carry_gpu_checkpoint_and_retries():
    config = synthetic(retries=1)
    for job in dag.build_jobs(config):
        if job.stage == "train":
            assert job.gpus == 1 and job.cores >= 2 and job.memory_mb >= 8000
            assert job.checkpoint == job.outputs[0].replace(".keras", ".ckpt.zip")
            assert job.checkpoint in job.args
            # Room for the checkpoint-time restarts on Pegasus: one per 50 min of the sized runtime.
            assert dag.pegasus_retries(job) == config.retries + math.ceil(job.runtime_s / 60 / 50)
        else:
            assert job.checkpoint is None and dag.pegasus_retries(job) == 1
        assert job.retries == 1


@pytest.mark.parametrize("views", ["chain", "dihedral"])
def test_regression_views_reach_the_regression_augment_and_search_jobs(views):
    jobs = dag.build_jobs(synthetic(regression_views=views, hpo_trials=2))
    augment = {job.id: job.args for job in jobs if job.stage == "augment"}
    for name, args in augment.items():
        if "Binary" in name:
            assert "--regression-views" not in args
        else:
            assert args[args.index("--regression-views") + 1] == views
    trials = [job.args for job in jobs if job.stage == "hpo" and job.args[0] == "trial"]
    assert trials and all(args[args.index("--regression-views") + 1] == views for args in trials)
    with pytest.raises(ConfigError, match="regression.views"):
        synthetic(regression_views="bilinear").validate()


def test_jobs_round_trip_through_jobs_json(tmp_path):
    jobs = dag.build_jobs(synthetic())
    dag.save_jobs(tmp_path, jobs)
    assert dag.load_jobs(tmp_path) == jobs


def test_conflicting_outputs_are_refused():
    jobs = [dag.JobSpec("a", "prep", "x", [], [], ["f"]), dag.JobSpec("b", "prep", "x", [], [], ["f"])]
    with pytest.raises(ConfigError, match="written by both a and b"):
        dag.infer_parents(jobs)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--synthetic", "10", "--models", "model7"], "invalid --models: 'model7'"),
        (["--synthetic", "10", "--size", "64", "--models", "model5"], "76"),
        (["--synthetic", "10", "--tasks", "binary"], "regression"),
        (["--size", "64"], "--synthetic N, or both --data-path"),
        (["--synthetic", "10", "--galaxies-per-job", "0"], "invalid --galaxies-per-job"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(tmp_path, capsys, flags, message):
    assert main([*flags, "--output-dir", str(tmp_path / "run"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _real_data(tmp_path, n=12, missing=()):
    images = tmp_path / "images"
    images.mkdir()
    galaxies = [Galaxy(pgc=100 + i, inc=45 + 3 * i) for i in range(n)]
    write_catalog(tmp_path / "catalog.csv", [g.as_row() for g in galaxies], fmt="csv")
    for galaxy in galaxies:
        for band in naming.BANDS:
            if (galaxy.pgc, band) in missing:
                continue
            # gri alternates between the two accepted names.
            names = naming.raw_image_names(galaxy.pgc, band)
            name = names[galaxy.pgc % 2] if band == "gri" else names[0]
            (images / name).write_bytes(b"x")
    return images, tmp_path / "catalog.csv"


def test_real_data_declares_exactly_the_images_on_disk(tmp_path, capsys):
    images, catalog = _real_data(tmp_path, missing={(103, "g"), (107, "gri")})
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "--data-path",
                str(images),
                "--catalog",
                str(catalog),
                "--galaxies-per-job",
                "5",
                "--size",
                "64",
                "--models",
                "model4",
                "--output-dir",
                str(run_dir),
                "--dry-run",
            ]
        )
        == 0
    )
    jobs = dag.load_jobs(run_dir)
    raw = dag.raw_inputs(jobs)
    assert dag.RAW_CATALOG in raw
    declared = {Path(lfn).name for lfn in raw if lfn != dag.RAW_CATALOG}
    on_disk = {p.name for p in images.iterdir()}
    assert declared == on_disk  # both gri spellings found, missing ones not declared
    assert sum(job.stage == "prep" for job in jobs) == 4 * 3
    missing = (run_dir / "missing_inputs.csv").read_text().splitlines()
    assert missing[0] == "pgc,band,file,reason" and len(missing) == 3
    assert any(line.startswith("103,g,") for line in missing)
    # Every raw input is located by the run's replica catalog, on site local.
    exact, regex = load_replicas(run_dir / "replicas.yml")
    for lfn in raw:
        path = resolve_replica(lfn, exact, regex)
        assert path is not None and path.exists(), lfn


def test_building_never_imports_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from workflow.cli import main\n"
        f"assert main(['--synthetic', '40', '--output-dir', r'{tmp_path / 'run'}', '--dry-run', '-q']) == 0\n"
        "assert main(['--help']) == 0\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'galsim')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_existing_run_is_not_overwritten_without_force(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--synthetic", "20", "--output-dir", str(run_dir), "--dry-run"]
    assert main(flags) == 0
    assert main(flags) == 2
    assert "resume" in capsys.readouterr().err
    (run_dir / "state").mkdir(exist_ok=True)
    (run_dir / "state" / "old.json").write_text("{}")
    assert main([*flags, "--force", "--size", "96"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["size"] == 96 and info["engine"] == "local"
    assert not (run_dir / "state" / "old.json").exists()  # state of the old DAG is gone


def test_demo_preset_and_overrides(tmp_path):
    run_dir = tmp_path / "demo"
    assert main(["--demo", "--epochs", "1", "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["synthetic"] == 1500 and config["size"] == 64 and config["models"] == ["model4"]
    assert config["lr_schedule"] == "cosine"
    assert config["epochs"] == 1


def test_root_names_real_images_only(tmp_path):
    assert main(["--synthetic", "20", "--root", "other", "--output-dir", str(tmp_path / "x"), "--dry-run"]) == 2


def test_reject_members_start_from_their_models_regression_trunk():
    jobs = {job.id: job for job in dag.build_jobs(synthetic(models=("model4", "model6")))}
    for model in ("model4", "model6"):
        binary = jobs[f"train_Binary_{model}"]
        trunk = f"models/Uset_000_{model}.keras"
        assert binary.args[binary.args.index("--init-trunk") + 1] == trunk
        assert trunk in binary.inputs and f"train_Uset_000_{model}" in binary.parents
    for job in jobs.values():
        if job.stage == "train" and "Binary" not in job.id:
            assert "--init-trunk" not in job.args
    binary = {job.id: job for job in dag.build_jobs(synthetic(binary_trunk="scratch"))}["train_Binary_model4"]
    assert "--init-trunk" not in binary.args and not any(p.startswith("train_") for p in binary.parents)
    with pytest.raises(ConfigError, match="binary.trunk"):
        synthetic(binary_trunk="imagenet").validate()
