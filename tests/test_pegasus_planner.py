"""The real Pegasus planner (pegasus-plan 5.1.2) plans run directories: what it writes is checked.

Needs ``pegasus-plan`` and the HTCondor stand-ins of ../shared/pegasus-planner on PATH
(``eval "$(bash ../shared/pegasus-planner/install.sh ~/.cache/pegasus-5.1.2)"``; .ci/run does
it). Skipped without them, except under CI (``CI`` set), where they must be there. Nothing
is submitted: there is no HTCondor here, so the engine plans without ``--submit``.
"""

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from workflow import dag
from workflow.cli import main
from workflow.engines import pegasus

pytestmark = pytest.mark.pegasus

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
    "--engine",
    "pegasus",
]
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "shared" / "pegasus-schema"
SCHEMAS = {
    "workflow.yml": "wf-5.0.yml",
    "sites.yml": "sc-5.0.yml",
    "replicas.yml": "rc-5.0.yml",
    "transformations.yml": "tc-5.0.yml",
}


@pytest.fixture
def planner(tmp_path, monkeypatch):
    """The planner's version; HOME points into tmp_path (the planner keeps ~/.pegasus/workflow.db)."""
    if not (shutil.which("pegasus-plan") and shutil.which("condor_submit_dag")):
        message = "pegasus-plan and the HTCondor stand-ins are not on PATH (see ../shared/pegasus-planner)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install them (.ci/run)")
        pytest.skip(message)
    if shutil.which("condor_submit"):
        pytest.skip("HTCondor is installed here: these tests would submit")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return "5.1.2"


def plan(tmp_path, name, *flags):
    run_dir = tmp_path / name
    assert main([*FLAGS, *flags, "--output-dir", str(run_dir), "-q"]) == 0
    submit_dir = pegasus.find_submit_dir(run_dir)
    assert submit_dir is not None and (submit_dir / "braindump.yml").is_file()
    return run_dir, submit_dir


def dag_lines(submit_dir):
    brain = pegasus.read_braindump(submit_dir)
    return (submit_dir / brain["dag"]).read_text().splitlines()


def submit_file(submit_dir, name):
    (path,) = submit_dir.glob(f"**/{name}.sub")
    return path.read_text()


def kickstart_deadlines(submit_dir):
    """``{job id: (-k, -K)}`` from every kickstart call the planner wrote (.sh and cluster .in files)."""
    found = {}
    for path in list(submit_dir.glob("**/*.sh")) + list(submit_dir.glob("**/*.in")):
        for match in re.finditer(r"pegasus-kickstart .*?-N (\S+) .*?-k (\d+) -K (\d+)", path.read_text()):
            found[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    return found


def test_condorpool_plan(tmp_path, planner):
    run_dir, submit_dir = plan(tmp_path, "run", "--resources", "split.runtime=3600")
    assert pegasus.read_braindump(submit_dir)["planner_version"] == planner
    assert submit_dir.is_relative_to(run_dir.resolve() / "submit") and submit_dir != run_dir.resolve() / "submit"
    jobs = {job.id: job for job in dag.load_jobs(run_dir)}
    lines = dag_lines(submit_dir)
    planned = [line.split()[1] for line in lines if line.startswith("JOB ")]
    compute = [name for name in planned if name.startswith("inclinet-")]
    assert len(compute) == len(jobs)  # every job planned, none pruned, none clustered

    retry = dict(line.split()[1:3] for line in lines if line.startswith("RETRY "))
    for job_id, job in jobs.items():
        assert int(retry[f"{job.executable}_{job_id}"]) == dag.pegasus_retries(job), job_id

    for job_id, job in jobs.items():
        sub = submit_file(submit_dir, f"{job.executable}_{job_id}")
        assert ("request_gpus = 1" in sub) == bool(job.gpus), job_id
        assert f"request_memory = {job.memory_mb}" in sub and f"request_cpus = {job.cores}" in sub
    train = submit_file(submit_dir, "inclinet-train_train_Uset_000_model4")
    assert "inclinet.sif" in train  # stage mode: condorio sends the image with the job
    script = next(submit_dir.glob("**/inclinet-train_train_Uset_000_model4.sh")).read_text()
    assert re.search(r"singularity_exec.* exec .*--nv .*inclinet\.sif", script)

    deadlines = kickstart_deadlines(submit_dir)
    assert set(jobs) <= set(deadlines)
    for job_id, job in jobs.items():
        kill, grace = deadlines[job_id]
        if job.checkpoint:
            assert kill == 60 * dag.CHECKPOINT_TIME_MIN  # SIGTERM at checkpoint time, then a retry
        else:
            assert job.runtime_s / 2 <= kill and kill + grace <= job.runtime_s, job_id
    assert deadlines["split"][0] > deadlines["compress_g"][0]  # grows with the requested runtime


def test_slurm_plan_reaches_the_gpu_queue_and_stages_the_image_once(tmp_path, planner):
    run_dir, submit_dir = plan(tmp_path, "run", "--pegasus-site", "slurm")
    train = submit_file(submit_dir, "inclinet-train_train_Binary_model6")
    assert "batch_queue = gpu" in train and 'EXTRA_ARGUMENTS=="--gres=gpu:1"' in train
    assert 'GPUS=="1"' in train and "grid_resource = batch slurm" in train
    walltime = dag.MAX_WALLTIME_MIN * 60
    assert f'WALLTIME=="{walltime // 3600:02d}:{walltime % 3600 // 60:02d}:00"' in train  # one attempt
    prep = submit_file(submit_dir, "inclinet-prep_prep_g_0001")
    assert "batch_queue = cpu" in prep and "EXTRA_ARGUMENTS" not in prep
    stage_ins = [p for p in submit_dir.glob("**/stage_in_*.in") if "inclinet.sif" in p.read_text()]
    assert len(stage_ins) == 1  # the image goes once to the site's shared scratch, jobs link it
    assert all("inclinet.sif" not in p.read_text() for p in submit_dir.glob("**/inclinet-*.sub"))


@pytest.mark.parametrize("site", ["condorpool", "slurm"])
def test_clustering_plans_on_every_site(tmp_path, planner, site):
    run_dir, submit_dir = plan(tmp_path, "run", "--pegasus-site", site, "--cluster-size", "2")
    planned = [line.split()[1] for line in dag_lines(submit_dir) if line.startswith("JOB ")]
    merged = [name for name in planned if name.startswith("merge_")]
    jobs = dag.load_jobs(run_dir)
    labels = dag.cluster_labels(jobs, 2)
    multi = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    assert len(merged) == len(multi)
    assert len([n for n in planned if n.startswith("inclinet-")]) == len(jobs) - len(labels) + (
        len(set(labels.values())) - len(multi)
    )


def test_reuse_plans_against_the_real_submit_dir(tmp_path, planner):
    first, first_submit = plan(tmp_path, "first")
    second, second_submit = plan(tmp_path, "second", "--reuse", str(first))
    arguments = pegasus.read_braindump(second_submit)["planner_arguments"]
    assert f"--reuse {first_submit}" in arguments


def test_shared_container_is_never_transferred(tmp_path, planner):
    _, submit_dir = plan(
        tmp_path, "run", "--container-mode", "shared", "--container-image", "file:///cvmfs/inclinet/inclinet.sif"
    )
    assert all("inclinet.sif" not in p.read_text() for p in submit_dir.glob("**/*.sub"))
    script = next(submit_dir.glob("**/inclinet-train_train_Uset_000_model4.sh")).read_text()
    assert "file:///cvmfs/inclinet/inclinet.sif" in script


def test_status_without_htcondor_reports_the_planned_jobs(tmp_path, planner, capsys):
    run_dir, submit_dir = plan(tmp_path, "run")
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "planned, not submitted" in out and f"pegasus-run {submit_dir}" in out
    counts = re.search(r"(\d+) planned jobs", out)
    assert int(counts.group(1)) == len([ln for ln in dag_lines(submit_dir) if ln.startswith("JOB ")])


def test_5_1_3_schema_accepts_the_clustered_and_shared_run_files(tmp_path):
    """The files also validate against the 5.1.3 schemas (../shared/pegasus-schema)."""
    if not SCHEMA_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SCHEMA_DIR} is missing; CI must provide the Pegasus schemas")
        pytest.skip(f"{SCHEMA_DIR} not present")
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT7

    resources = {
        path.name: referencing.Resource.from_contents(yaml.safe_load(path.read_text()), default_specification=DRAFT7)
        for path in SCHEMA_DIR.glob("*.yml")
    }
    registry = referencing.Registry().with_resources(resources.items())
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                *FLAGS,
                "--cluster-size",
                "2",
                "--container-mode",
                "shared",
                "--container-image",
                "file:///cvmfs/inclinet/inclinet.sif",
                "--output-dir",
                str(run_dir),
                "--dry-run",
                "-q",
            ]
        )
        == 0
    )
    for name, schema in SCHEMAS.items():
        validator = jsonschema.Draft7Validator(resources[schema].contents, registry=registry)
        document = yaml.safe_load((run_dir / name).read_text())
        assert [e.message for e in validator.iter_errors(document)] == [], name
