"""The Pegasus side: workflow.yml contents (profiles, checkpoints, staging) and the pegasus engine's planning."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow import dag
from workflow.cli import main

FLAGS = ["--synthetic", "30", "--galaxies-per-job", "10", "--size", "64", "--models", "model4,model6",
         "--subsamples", "1", "--retries", "2"]


@pytest.fixture
def built(tmp_path):
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    return run_dir, yaml.safe_load((run_dir / "workflow.yml").read_text()), dag.load_jobs(run_dir)


def test_workflow_yml_has_the_same_jobs_arguments_and_edges(built):
    _, workflow, jobs = built
    by_id = {job["id"]: job for job in workflow["jobs"]}
    assert [job.id for job in jobs] == [job["id"] for job in workflow["jobs"]]
    for spec in jobs:
        job = by_id[spec.id]
        assert job["name"] == spec.executable
        assert [str(a) for a in job["arguments"]] == spec.args
        uses = {u["lfn"]: u["type"] for u in job["uses"]}
        assert {lfn for lfn, kind in uses.items() if kind == "input"} == set(spec.inputs)
        assert {lfn for lfn, kind in uses.items() if kind == "output"} == set(spec.outputs)
    edges = {(d["id"], child) for d in workflow["jobDependencies"] for child in d["children"]}
    assert edges == {(parent, spec.id) for spec in jobs for parent in spec.parents}


def test_training_jobs_carry_gpu_checkpoint_and_retry_settings(built):
    _, workflow, jobs = built
    trains = [job for job in workflow["jobs"] if job["nodeLabel"] == "train"]
    assert len(trains) == 6
    for job in trains:
        pegasus = job["profiles"]["pegasus"]
        assert pegasus["gpus"] == 1 and pegasus["cores"] == 2 and pegasus["memory"] >= 8000
        assert int(pegasus["runtime"]) > 0 and pegasus["tag"] == "gpu"
        assert 0 < pegasus["checkpoint.time"] < pegasus["maxwalltime"]
        (checkpoint,) = [u for u in job["uses"] if u["type"] == "checkpoint"]
        assert checkpoint["lfn"].endswith(".ckpt.zip") and checkpoint["lfn"] in job["arguments"]
        assert int(job["profiles"]["dagman"]["RETRY"]) >= 2 + 4  # user's retries + checkpoint restarts
    others = [job for job in workflow["jobs"] if job["nodeLabel"] not in ("train", "evaluate")]
    assert all(int(job["profiles"]["dagman"]["RETRY"]) == 2 for job in others)
    assert all("gpus" not in job["profiles"]["pegasus"] for job in others)


def test_only_final_products_are_staged_out_and_registered(built):
    _, workflow, _ = built
    for job in workflow["jobs"]:
        for use in job["uses"]:
            if use["type"] != "output":
                continue
            final = use["lfn"].startswith(("models/", "evaluation/", "bundle/"))
            assert use["stageOut"] is final and use["registerReplica"] is final, use["lfn"]


def test_lfns_keep_their_directories(built):
    _, workflow, _ = built
    lfns = {u["lfn"] for job in workflow["jobs"] for u in job["uses"]}
    assert "samples/RGB_64x64_test_000.npz" in lfns and "augmented/Uset_001_npz/64x64_train_aug_01.npz" in lfns


def _no_pegasus_path(tmp_path):
    """PATH with this Python but without any pegasus-* tool."""
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    os.symlink(sys.executable, bare / "python3")
    return str(bare)


def test_engine_pegasus_without_planner_prints_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _no_pegasus_path(tmp_path))
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--engine", "pegasus", "--pegasus-site", "slurm", "--output-dir", str(run_dir), "-q"]) == 0
    out = capsys.readouterr().out
    assert "pegasus-plan is not on PATH" in out
    assert f"--conf {(run_dir / 'pegasus.properties').resolve()}" in out
    assert "--sites slurm" in out and "--staging-site slurm=slurm" in out
    assert f"--submit {(run_dir / 'workflow.yml').resolve()}" in out
    for name in ("workflow.yml", "sites.yml", "replicas.yml", "transformations.yml", "pegasus.properties"):
        assert (run_dir / name).is_file()
    assert main(["status", str(run_dir)]) == 0
    assert f"pegasus-status -l {(run_dir / 'submit').resolve()}" in capsys.readouterr().out


FAKE_PLAN = """#!{python}
import json, os, sys
args = sys.argv[1:]
submit = args[args.index("--dir") + 1]
os.makedirs(submit, exist_ok=True)
open(os.path.join(submit, "braindump.yml"), "w").write("user: test\\nsubmit_dir: " + submit + "\\n")
open(os.path.join(os.path.dirname(sys.argv[0]), "plan-args.json"), "w").write(json.dumps(args))
print(json.dumps({{"submit_dir": submit, "message": "planned"}}))
"""

FAKE_TOOL = """#!{python}
import json, os, sys
open(os.path.join(os.path.dirname(sys.argv[0]), os.path.basename(sys.argv[0]) + "-args.json"), "w").write(
    json.dumps(sys.argv[1:]))
"""


def _fake_pegasus(tmp_path):
    bin_dir = tmp_path / "pegasus" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {"pegasus-plan": FAKE_PLAN, "pegasus-version": FAKE_TOOL, "pegasus-status": FAKE_TOOL,
               "pegasus-run": FAKE_TOOL, "pegasus-remove": FAKE_TOOL}
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_engine_pegasus_plans_and_submits_through_the_api(tmp_path, monkeypatch):
    bin_dir = _fake_pegasus(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--engine", "pegasus", "--output-dir", str(run_dir), "-q"]) == 0
    args = json.loads((bin_dir / "plan-args.json").read_text())
    assert "--submit" in args and args[-2:] == [str((run_dir / "workflow.yml").resolve()), "--json"]
    assert args[args.index("--sites") + 1] == "condorpool"
    assert args[args.index("--conf") + 1] == str((run_dir / "pegasus.properties").resolve())
    assert args[args.index("--cleanup") + 1] == "inplace"
    assert "--staging-site" not in args  # condorpool uses condorio
    submit = json.loads((run_dir / "state" / "pegasus.json").read_text())["submit_dir"]
    assert submit == str((run_dir / "submit").resolve())
    for command, tool in (("status", "pegasus-status"), ("resume", "pegasus-run"), ("cancel", "pegasus-remove")):
        assert main([command, str(run_dir)]) == 0
        assert json.loads((bin_dir / f"{tool}-args.json").read_text())[-1] == submit


@pytest.mark.pegasus
def test_real_planner_accepts_the_workflow(tmp_path):
    if not shutil.which("pegasus-plan"):
        pytest.skip("pegasus-plan not on PATH")
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    result = subprocess.run(["pegasus-plan", "--conf", str(run_dir / "pegasus.properties"), "--dir",
                             str(tmp_path / "submit"), "--sites", "condorpool", "--output-sites", "local",
                             str(run_dir / "workflow.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(tmp_path / "submit").is_dir()


def test_cluster_size_groups_only_the_small_jobs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _no_pegasus_path(tmp_path))
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--engine", "pegasus", "--cluster-size", "5", "--output-dir", str(run_dir), "-q"]) == 0
    assert "--cluster horizontal" in capsys.readouterr().out
    workflow = yaml.safe_load((run_dir / "workflow.yml").read_text())
    for job in workflow["jobs"]:
        clustered = job["profiles"]["pegasus"].get("clusters.size")
        assert clustered == (None if job["nodeLabel"] in ("train", "evaluate") else 5), job["id"]
