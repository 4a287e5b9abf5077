"""The Pegasus side: workflow.yml contents (profiles, checkpoints, staging, clustering, sizing), GPU queues
in the transformation catalog, reproducibility, and the pegasus engine with stand-in Pegasus tools.

The real 5.1.2 planner is exercised in tests/test_pegasus_planner.py."""

import json
import math
import os
import stat
import sys

import pytest
import yaml

from workflow import dag
from workflow.cli import main

FLAGS = [
    "--synthetic",
    "30",
    "--galaxies-per-job",
    "10",
    "--size",
    "64",
    "--models",
    "model4,model6",
    "--subsamples",
    "1",
    "--retries",
    "2",
]


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
        assert int(pegasus["runtime"]) == 60 * dag.MAX_WALLTIME_MIN and "tag" not in pegasus
        assert 0 < pegasus["checkpoint.time"] < pegasus["maxwalltime"]
        (checkpoint,) = [u for u in job["uses"] if u["type"] == "checkpoint"]
        assert checkpoint["lfn"].endswith(".ckpt.zip") and checkpoint["lfn"] in job["arguments"]
        spec = next(j for j in jobs if j.id == job["id"])  # user's retries + one per checkpoint interval
        assert int(job["profiles"]["dagman"]["RETRY"]) == 2 + math.ceil(spec.runtime_s / 60 / dag.CHECKPOINT_TIME_MIN)
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


def test_gpu_queue_goes_to_the_transformation_catalog_not_the_run_sites(built):
    run_dir, _, _ = built
    sites = {s["name"]: s for s in yaml.safe_load((run_dir / "sites.yml").read_text())["sites"]}
    assert all("x-tags" not in site for site in sites.values())  # Pegasus 5.1.2 refuses them
    tc = yaml.safe_load((run_dir / "transformations.yml").read_text())
    for transformation in tc["transformations"]:
        site_profiles = {s["name"]: s.get("profiles") for s in transformation["sites"]}
        if transformation["name"] in ("inclinet-train", "inclinet-evaluate"):
            assert site_profiles["slurm"] == {"pegasus": {"queue": "gpu", "glite.arguments": "--gres=gpu:1"}}
        else:
            assert site_profiles["slurm"] is None
        assert site_profiles["condorpool"] is None


def test_run_directory_is_byte_reproducible(tmp_path):
    run_dir = tmp_path / "run"
    copies = []
    for attempt in range(2):
        assert main([*FLAGS, "--cluster-size", "3", "--output-dir", str(run_dir), "--dry-run", "--force", "-q"]) == 0
        copy = tmp_path / f"copy{attempt}"
        os.rename(run_dir, copy)
        copies.append(copy)
    # run.json records when the run was built; every other file must be the same bytes.
    names = sorted(str(p.relative_to(copies[0])) for p in copies[0].rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(copies[1])) for p in copies[1].rglob("*") if p.is_file())
    for name in names:
        if name == "run.json":
            continue
        text = [(c / name).read_bytes().replace(str(c).encode(), b"RUN") for c in copies]
        assert text[0] == text[1], name


def test_runtimes_grow_with_the_work_and_can_be_overridden():
    small = {j.id: j for j in dag.build_jobs(dag.WorkflowConfig(synthetic=40, galaxies_per_job=40))}
    large = {
        j.id: j
        for j in dag.build_jobs(dag.WorkflowConfig(synthetic=200_000, galaxies_per_job=500, size=256, per_bin=300))
    }
    for job_id in ("split", "compress_g", "augment_Uset_000", "train_Uset_000_model6", "evaluate"):
        assert large[job_id].runtime_s > small[job_id].runtime_s, job_id
    assert small["split"].runtime_s == dag.RUNTIME_FLOOR_S
    assert large["evaluate"].memory_mb > small["evaluate"].memory_mb
    more_epochs = dag.build_jobs(dag.WorkflowConfig(synthetic=40, galaxies_per_job=40, epochs=100))
    assert {j.id: j for j in more_epochs}["train_Uset_000_model4"].runtime_s > small["train_Uset_000_model4"].runtime_s
    overridden = dag.build_jobs(dag.WorkflowConfig(synthetic=40, resources=("train.runtime=7200", "prep.memory=3000")))
    for job in overridden:
        if job.stage == "train":
            assert job.runtime_s == 7200 and dag.pegasus_retries(job) == job.retries + 3
        if job.stage == "prep":
            assert job.memory_mb == 3000


def test_resources_flag_reaches_every_engine_and_bad_values_are_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                *FLAGS,
                "--resources",
                "split.runtime=4000",
                "--resources",
                "train.cores=4",
                "--output-dir",
                str(run_dir),
                "--dry-run",
                "-q",
            ]
        )
        == 0
    )
    jobs = {j.id: j for j in dag.load_jobs(run_dir)}
    assert jobs["split"].runtime_s == 4000 and jobs["train_Uset_000_model4"].cores == 4
    workflow = {j["id"]: j for j in yaml.safe_load((run_dir / "workflow.yml").read_text())["jobs"]}
    assert workflow["split"]["profiles"]["pegasus"]["runtime"] == "4000"
    assert main([*FLAGS, "--resources", "split.walltime=4", "--output-dir", str(tmp_path / "bad"), "--dry-run"]) == 2
    assert "invalid --resources: 'split.walltime=4'" in capsys.readouterr().err


def test_cluster_labels_never_mix_bands_or_stages(tmp_path):
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--cluster-size", "2", "--output-dir", str(run_dir), "--dry-run", "-q"]) == 0
    workflow = yaml.safe_load((run_dir / "workflow.yml").read_text())
    clusters = {}
    for job in workflow["jobs"]:
        label = job["profiles"]["pegasus"].get("label")
        assert (label is not None) == (job["nodeLabel"] in ("synth", "prep")), job["id"]
        if label:
            clusters.setdefault(label, []).append(job)
    assert 1 < len(clusters) and all(len(members) <= 2 for members in clusters.values())
    for members in clusters.values():
        # condorio puts all files of a clustered job in one directory: no two may share a base name.
        lfns = {u["lfn"] for job in members for u in job["uses"]}
        assert len({lfn.rsplit("/", 1)[-1] for lfn in lfns}) == len(lfns)
    # Clustering is part of the DAG: jobs.json carries the same labels as workflow.yml.
    recorded = {job.id: job.cluster for job in dag.load_jobs(run_dir)}
    assert recorded == {job["id"]: job["profiles"]["pegasus"].get("label") for job in workflow["jobs"]}


def test_shared_container_is_read_in_place_on_every_site(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                *FLAGS,
                "--container-mode",
                "shared",
                "--container-image",
                "file:///cvmfs/x/inclinet.sif",
                "--output-dir",
                str(run_dir),
                "--dry-run",
                "-q",
            ]
        )
        == 0
    )
    tc = yaml.safe_load((run_dir / "transformations.yml").read_text())
    containers = {c["name"]: c for c in tc["containers"]}
    assert set(containers) == {"inclinet-condorpool", "inclinet-slurm"}
    for name, container in containers.items():
        assert container["bypass"] is True and container["image.site"] == name.split("-", 1)[1]
    for transformation in tc["transformations"]:
        assert {s["container"] for s in transformation["sites"]} == set(containers)
    assert (
        main(
            [
                *FLAGS,
                "--container-mode",
                "shared",
                "--container-image",
                "docker://me/inclinet:1",
                "--output-dir",
                str(tmp_path / "bad"),
                "--dry-run",
            ]
        )
        == 2
    )
    assert "file:///PATH with --container-mode shared" in capsys.readouterr().err


def _no_pegasus_path(tmp_path):
    """PATH with this Python but without any pegasus-* or HTCondor tool."""
    bare = tmp_path / "bare-bin"
    bare.mkdir(exist_ok=True)
    if not (bare / "python3").exists():
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
    out = capsys.readouterr().out
    assert "not planned yet" in out and f"resume {run_dir}" in out


def test_dry_run_writes_what_the_engine_plans(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _no_pegasus_path(tmp_path))
    flags = [*FLAGS, "--engine", "pegasus", "--cluster-size", "4", "--resources", "train.runtime=9000"]
    dry, real = tmp_path / "dry", tmp_path / "real"
    assert main([*flags, "--output-dir", str(dry), "--dry-run", "-q"]) == 0
    assert main([*flags, "--output-dir", str(real), "-q"]) == 0
    for name in ("workflow.yml", "transformations.yml", "sites.yml", "replicas.yml", "jobs.json"):
        texts = [(d / name).read_text().replace(str(d.resolve()), "RUN") for d in (dry, real)]
        assert texts[0] == texts[1], name
    assert "label" in (dry / "workflow.yml").read_text()


FAKE_PLAN = """#!{python}
import json, os, sys
args = sys.argv[1:]
here = os.path.dirname(sys.argv[0])
base = args[args.index("--dir") + 1]
n = 1
while os.path.exists(os.path.join(base, "u", "pegasus", "inclinet", "run%04d" % n)):
    n += 1
submit = os.path.join(base, "u", "pegasus", "inclinet", "run%04d" % n)
os.makedirs(submit)
open(os.path.join(submit, "braindump.yml"), "w").write(
    "submit_dir: " + submit + "\\nplanner_version: 5.1.2\\ndag: inclinet-0.dag\\n")
open(os.path.join(submit, "inclinet-0.dag"), "w").write(
    "JOB create_dir_inclinet_0_local 00/00/a.sub\\nJOB inclinet-prep_prep_g_0001 00/00/b.sub\\n"
    "JOB inclinet-train_train_Uset_000_model4 00/00/c.sub\\n")
open(os.path.join(here, "plan-args.json"), "w").write(json.dumps(args))
print("I have concretized your abstract workflow.\\n\\npegasus-run  " + submit + "\\n")
"""

FAKE_TOOL = """#!{python}
import json, os, sys
open(os.path.join(os.path.dirname(sys.argv[0]), os.path.basename(sys.argv[0]) + "-args.json"), "w").write(
    json.dumps(sys.argv[1:]))
"""


def _fake_pegasus(tmp_path, *, condor):
    bin_dir = tmp_path / "pegasus" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {
        "pegasus-plan": FAKE_PLAN,
        "pegasus-status": FAKE_TOOL,
        "pegasus-run": FAKE_TOOL,
        "pegasus-remove": FAKE_TOOL,
    }
    if condor:
        scripts.update({"condor_submit": FAKE_TOOL, "condor_q": FAKE_TOOL})
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_engine_plans_submits_and_operates_the_real_submit_dir(tmp_path, monkeypatch, capsys):
    bin_dir = _fake_pegasus(tmp_path, condor=True)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{_no_pegasus_path(tmp_path)}")
    run_dir = tmp_path / "run"
    assert main([*FLAGS, "--engine", "pegasus", "--output-dir", str(run_dir), "-q"]) == 0
    args = json.loads((bin_dir / "plan-args.json").read_text())
    assert args[-2:] == ["--submit", str((run_dir / "workflow.yml").resolve())]
    assert args[args.index("--sites") + 1] == "condorpool"
    assert args[args.index("--conf") + 1] == str((run_dir / "pegasus.properties").resolve())
    assert args[args.index("--cleanup") + 1] == "inplace"
    assert "--staging-site" not in args and "--cluster" not in args  # condorpool uses condorio
    submit = str((run_dir / "submit" / "u" / "pegasus" / "inclinet" / "run0001").resolve())
    recorded = json.loads((run_dir / "state" / "pegasus.json").read_text())
    assert recorded["submit_dir"] == submit and recorded["submitted"] and recorded["planner_version"] == "5.1.2"
    assert f"pegasus-status -l {submit}" in capsys.readouterr().out
    for command, tool in (("status", "pegasus-status"), ("resume", "pegasus-run"), ("cancel", "pegasus-remove")):
        assert main([command, str(run_dir)]) == 0
        assert json.loads((bin_dir / f"{tool}-args.json").read_text())[-1] == submit
    assert json.loads((bin_dir / "pegasus-status-args.json").read_text()) == ["-l", submit]

    # Re-planning with --reuse RUN reuses the real submit directory, not RUN/submit.
    again = tmp_path / "again"
    assert main([*FLAGS, "--engine", "pegasus", "--output-dir", str(again), "--reuse", str(run_dir), "-q"]) == 0
    args = json.loads((bin_dir / "plan-args.json").read_text())
    assert args[args.index("--reuse") + 1] == submit
    assert (
        main(
            [
                *FLAGS,
                "--engine",
                "pegasus",
                "--output-dir",
                str(tmp_path / "x"),
                "--reuse",
                str(tmp_path / "nothing"),
                "-q",
            ]
        )
        == 2
    )


def test_without_htcondor_a_run_is_planned_not_submitted_and_says_how(tmp_path, monkeypatch, capsys):
    bin_dir = _fake_pegasus(tmp_path, condor=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{_no_pegasus_path(tmp_path)}")
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                *FLAGS,
                "--engine",
                "pegasus",
                "--pegasus-site",
                "slurm",
                "--cluster-size",
                "2",
                "--output-dir",
                str(run_dir),
                "-q",
            ]
        )
        == 0
    )
    args = json.loads((bin_dir / "plan-args.json").read_text())
    assert "--submit" not in args and args[args.index("--cluster") + 1] == "label"
    assert args[args.index("--staging-site") + 1] == "slurm=slurm"
    submit = run_dir.resolve() / "submit" / "u" / "pegasus" / "inclinet" / "run0001"
    out = capsys.readouterr().out
    assert "planned, not submitted" in out and f"pegasus-run {submit}" in out

    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "planned, not submitted" in out and "3 planned jobs" in out and f"pegasus-run {submit}" in out
    assert main(["resume", str(run_dir)]) == 0  # pegasus-run needs HTCondor: prints it instead
    assert f"pegasus-run {submit}" in capsys.readouterr().out
    assert not (bin_dir / "pegasus-run-args.json").exists()

    # Once DAGMan ran (jobstate.log), status reads the states from it.
    (submit / "jobstate.log").write_text(
        "1 INTERNAL *** MONITORD_STARTED ***\n"
        "2 create_dir_inclinet_0_local SUBMIT 1.0 local - 1\n"
        "3 create_dir_inclinet_0_local POST_SCRIPT_SUCCESS 0 local - 1\n"
        "4 inclinet-prep_prep_g_0001 EXECUTE 2.0 slurm - 2\n"
        "5 inclinet-prep_prep_g_0001 POST_SCRIPT_FAILURE 1 slurm - 2\n"
    )
    assert main(["status", str(run_dir)]) == 1  # a job failed: the same exit code on every engine
    out = capsys.readouterr().out
    assert "from jobstate.log" in out and "failed: inclinet-prep_prep_g_0001" in out
    assert "    1     0     0     1     1   33.3" in out  # UNRDY READY RUN DONE FAIL %DONE


def test_dry_run_then_resume_plans_the_run(tmp_path, monkeypatch, capsys):
    bin_dir = _fake_pegasus(tmp_path, condor=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{_no_pegasus_path(tmp_path)}")
    run_dir = tmp_path / "run"
    assert (
        main([*FLAGS, "--engine", "pegasus", "--cluster-size", "2", "--output-dir", str(run_dir), "--dry-run", "-q"])
        == 0
    )
    assert main(["cancel", str(run_dir)]) == 0
    assert "not planned" in capsys.readouterr().out
    assert main(["status", str(run_dir)]) == 0
    assert "states: " in capsys.readouterr().out  # every job unsubmitted
    # Retries are planned into the workflow (dagman retry): resume cannot change them.
    assert main(["resume", str(run_dir), "--retries", "1"]) == 2
    assert "resume --retries" in capsys.readouterr().err
    assert main(["resume", str(run_dir)]) == 0
    args = json.loads((bin_dir / "plan-args.json").read_text())
    assert args[args.index("--cluster") + 1] == "label"
    assert "planned, not submitted" in capsys.readouterr().out
    assert json.loads((run_dir / "state" / "pegasus.json").read_text())["submitted"] is False


def test_jobstate_maps_onto_the_common_job_states(tmp_path):
    from workflow.engines import common, pegasus

    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / "braindump.yml").write_text("dag: w.dag\n")
    (submit / "w.dag").write_text(
        "JOB a a.sub\nJOB b b.sub\nJOB c c.sub\nJOB d d.sub\nJOB e e.sub\nJOB f f.sub\n"
        "JOB g g.sub\nPARENT a CHILD b\nPARENT b CHILD c\nPARENT d CHILD e\n"
        "PARENT f CHILD g\n"
    )
    (submit / "jobstate.log").write_text(
        "1 a SUBMIT 1 x - 1\n2 a POST_SCRIPT_FAILURE 1 x - 1\n3 d EXECUTE 1 x - 1\n4 f JOB_ABORTED 1 x - 1\n"
    )
    planned, states, _ = pegasus.summarize(submit)
    mapped = pegasus.job_states(submit, planned, states)
    assert mapped == {
        "a": "failed",
        "b": "blocked",
        "c": "blocked",
        "d": "running",
        "e": "pending",
        "f": "cancelled",
        "g": "blocked",
    }
    assert set(mapped.values()) <= set(common.JOB_STATES) and common.status_exit_code(mapped.values()) == 1
    assert set(pegasus.job_states(submit, planned, {}, submitted=False).values()) == {"unsubmitted"}


def test_engines_get_the_dag_from_the_cli_and_leave_the_pegasus_api_alone():
    """No engine reads run.json or rebuilds the DAG; the Pegasus engine sets no attribute of the Pegasus API."""
    import ast
    from pathlib import Path

    engines = Path(__file__).resolve().parents[1] / "workflow" / "engines"
    for name in ("local.py", "slurm.py", "pegasus.py"):
        tree = ast.parse((engines / name).read_text(encoding="utf-8"))
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert not used & {"read_run_info", "load_jobs", "build_jobs", "to_pegasus", "WorkflowConfig"}, name
    tree = ast.parse((engines / "pegasus.py").read_text(encoding="utf-8"))
    assert not [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("Pegasus")
    ]
    targets = [
        target
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
    ]
    assert not [t for t in targets if isinstance(t, ast.Attribute) and t.attr.startswith("_")]


def test_every_engine_follows_the_engine_contract():
    import inspect

    from workflow.engines import ENGINES, Engine, load

    for name in ENGINES:
        engine = load(name)
        assert isinstance(engine.RECORDED_FLAGS, tuple), name
        for method in ("run", "status", "resume", "cancel"):
            assert list(inspect.signature(getattr(engine, method)).parameters) == ["run_dir", "jobs", "args"], (
                name,
                method,
            )
        assert callable(engine.add_arguments)
    assert {"run", "status", "resume", "cancel", "add_arguments"} <= set(dir(Engine))
