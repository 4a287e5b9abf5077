"""Tests of the SLURM engine: command lines and state logic offline, then DAGs on a real cluster.

The tests marked ``slurm`` need a running cluster (``scripts/slurm/ci-setup.sh`` starts a
single-node one on localhost). Outside CI they skip with the reason; with ``CI`` set they
fail instead, so a CI run can never pass without exercising SLURM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inclinet.errors import ConfigError, StageError
from workflow.dag import JobSpec, WorkflowConfig, expected_job_counts, infer_parents, save_jobs
from workflow.engines import common, jobwrap, slurm

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------


def shell_job(job_id, script, inputs=(), outputs=(), *, retries=0, cores=1, gpus=0):
    """A trivial job: ``sh -c SCRIPT`` in the data directory, recording each run in runs/<id>."""
    script = f"echo run >> runs/{job_id}; {script}"
    return JobSpec(
        id=job_id,
        stage="synth",
        executable="sh",
        args=["-c", script],
        inputs=list(inputs),
        outputs=list(outputs),
        cores=cores,
        memory_mb=100,
        runtime_s=120,
        gpus=gpus,
        retries=retries,
    )


def make_run(run_dir, jobs):
    """A run directory as run_workflow.py writes it (jobs.json, run.json) for ``jobs``."""
    infer_parents(jobs)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data" / "runs").mkdir(parents=True)
    save_jobs(run_dir, jobs)
    (run_dir / "run.json").write_text(json.dumps({"format_version": 1, "engine": "slurm"}))
    return jobs


def engine_args(*argv):
    parser = argparse.ArgumentParser()
    slurm.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser.parse_args(list(argv))


def run_count(run_dir, job_id):
    path = run_dir / "data" / "runs" / job_id
    return len(path.read_text().splitlines()) if path.exists() else 0


def our_queue(run_dir):
    """``{slurm_id: STATE}`` of this run's jobs that SLURM still lists."""
    ids = slurm.submissions(run_dir).values()
    return {k: v[0] for k, v in slurm.squeue_states(ids).items()}


# -- offline: options, command lines, waves ---------------------------------------------


def test_sbatch_argv_has_dependencies_resources_and_logs(tmp_path):
    job = JobSpec(
        id="train_Uset_000_model4",
        stage="train",
        executable="inclinet-train",
        args=["--epochs", "1"],
        inputs=[],
        outputs=["m.keras"],
        cores=2,
        memory_mb=16000,
        runtime_s=4 * 3600 + 30,
        gpus=1,
        retries=3,
        checkpoint="m.ckpt.zip",
    )
    options = slurm.SlurmOptions(
        partition="cpu", gpu_partition="gpu", account="astro", sbatch_options=["--qos=short", "--mem=8G"]
    )
    argv = slurm.sbatch_argv(job, tmp_path, options, ["11", "12"], use_gpus=True)
    run = tmp_path.resolve()
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--job-name=train_Uset_000_model4" in argv
    assert f"--output={run}/logs/train_Uset_000_model4.log" in argv
    assert f"--chdir={run}/data" in argv
    assert "--cpus-per-task=2" in argv and "--mem=16000M" in argv and "--time=4:00:30" in argv
    assert "--partition=gpu" in argv and "--partition=cpu" not in argv
    assert "--account=astro" in argv and "--gres=gpu:1" in argv
    assert "--dependency=afterok:11:12" in argv and "--kill-on-invalid-dep=yes" in argv
    assert "--signal=B:TERM@120" in argv  # checkpointing job: warned before its time limit
    # extra options come after the engine's own, so that sbatch lets them win
    assert argv.index("--mem=8G") > argv.index("--mem=16000M")
    # the batch script is the job wrapper of every engine: record, job, first attempt, tries, command
    wrapper = argv.index(f"{run}/state/jobwrap.sh")
    assert argv[wrapper + 1 : wrapper + 5] == [
        f"{run}/state/exit/train_Uset_000_model4.json",
        "train_Uset_000_model4",
        "1",
        "4",
    ]  # 1 + retries tries
    assert argv[wrapper + 5].endswith("inclinet-train") and argv[-2:] == ["--epochs", "1"]
    # resume --retries N replaces the job's own retries, up or down
    for retries, tries in ((0, "1"), (5, "6")):
        options.retries = retries
        argv = slurm.sbatch_argv(job, tmp_path, options, ["11"], use_gpus=True)
        assert argv[argv.index(f"{run}/state/jobwrap.sh") + 4] == tries


def test_sbatch_argv_without_gpus_or_parents_and_gpus_flag(tmp_path):
    job = shell_job("a", "true", gpus=1)
    argv = slurm.sbatch_argv(job, tmp_path, slurm.SlurmOptions(partition="cpu", gpu_partition="gpu"))
    assert not any(a.startswith(("--gres", "--gpus", "--dependency", "--kill-on", "--signal")) for a in argv)
    assert "--partition=cpu" in argv
    argv = slurm.sbatch_argv(job, tmp_path, slurm.SlurmOptions(gpu_flag="gpus"), use_gpus=True)
    assert "--gpus=1" in argv


def test_container_wraps_the_bare_executable(tmp_path):
    job = JobSpec(
        id="evaluate",
        stage="evaluate",
        executable="inclinet-evaluate",
        args=["--views", "2"],
        inputs=[],
        outputs=[],
        gpus=1,
    )
    options = slurm.SlurmOptions(container="/images/inclinet.sif", container_runtime="singularity")
    command = slurm.job_command(job, tmp_path, options, use_gpus=True)
    run = tmp_path.resolve()
    assert command == [
        "singularity",
        "exec",
        "--nv",
        "--bind",
        str(run),
        "--pwd",
        f"{run}/data",
        "/images/inclinet.sif",
        "inclinet-evaluate",
        "--views",
        "2",
    ]
    assert "--nv" not in slurm.job_command(job, tmp_path, options, use_gpus=False)


def test_container_binds_the_host_folders_a_job_reads(tmp_path):
    # --data-path images linked into RUN/data and --foreign folders given by absolute path lie
    # outside the run directory: the container must see them at the same path, read-only.
    run = (tmp_path / "run").resolve()
    images = (tmp_path / "survey" / "images").resolve()
    foreign = (tmp_path / "foreign").resolve()
    nested = images / "sub"
    for folder in (nested, foreign, run / "data" / "raw" / "galaxies"):
        folder.mkdir(parents=True)
    (images / "pgc1_d25x2_rot_g.png").write_bytes(b"x")
    (nested / "pgc2_d25x2_rot_g.png").write_bytes(b"x")
    (run / "data" / "raw" / "galaxies" / "pgc1_d25x2_rot_g.png").symlink_to(images / "pgc1_d25x2_rot_g.png")
    (run / "data" / "raw" / "galaxies" / "pgc2_d25x2_rot_g.png").symlink_to(nested / "pgc2_d25x2_rot_g.png")
    (run / "data" / "local.npz").write_bytes(b"x")
    job = JobSpec(
        id="trial_00",
        stage="hpo",
        executable="inclinet-hpo",
        args=["trial", "--foreign", str(foreign), "--out", str(run / "data" / "x.json"), "--missing", "/no/such"],
        inputs=["raw/galaxies/pgc1_d25x2_rot_g.png", "raw/galaxies/pgc2_d25x2_rot_g.png", "local.npz"],
        outputs=[],
    )
    assert slurm.external_folders(job, run) == sorted([images, foreign])
    command = slurm.job_command(job, run, slurm.SlurmOptions(container="/images/inclinet.sif"))
    binds = [command[i + 1] for i, a in enumerate(command) if a == "--bind"]
    assert binds == [str(run), *sorted(f"{f}:{f}:ro" for f in (images, foreign))]
    assert command[command.index("--pwd") + 1] == f"{run}/data"
    # Without a container nothing changes.
    assert "--bind" not in slurm.job_command(job, run, slurm.SlurmOptions())


def test_options_from_flags_keep_stored_values():
    stored = slurm.SlurmOptions(partition="long", account="astro", sbatch_options=["--qos=x"])
    options = slurm.SlurmOptions.from_args(engine_args("--partition", "short"), stored)
    assert (options.partition, options.account, options.sbatch_options) == ("short", "astro", ["--qos=x"])
    options = slurm.SlurmOptions.from_args(engine_args("--sbatch-option=--qos=y", "--container", "a.sif"))
    assert options.sbatch_options == ["--qos=y"] and options.container == "a.sif"
    with pytest.raises(ConfigError, match="invalid --submit-workers"):
        slurm.SlurmOptions.from_args(engine_args("--submit-workers", "0"))


def test_levels_put_parents_first():
    jobs = infer_parents(
        [
            shell_job("a", "", outputs=["a"]),
            shell_job("b", "", ["a"], ["b"]),
            shell_job("c", "", ["b"], ["c"]),
            shell_job("d", "", [], ["d"]),
        ]
    )
    waves = slurm._levels(jobs, {"a", "b", "c", "d"})
    assert [sorted(j.id for j in wave) for wave in waves] == [["a", "d"], ["b"], ["c"]]
    # with a finished and a live parent left out, the rest starts in the first wave
    assert [[j.id for j in wave] for wave in slurm._levels(jobs, {"c"})] == [["c"]]


def test_help_and_parsing_do_not_import_tensorflow():
    code = (
        "import sys; from workflow.engines import slurm; import argparse; p = argparse.ArgumentParser(); "
        "slurm.add_arguments(p); p.parse_args(['--partition', 'x']); assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# -- offline: state logic with SLURM answers mocked --------------------------------------


def _fake_run(tmp_path, monkeypatch, queue, accounting=None):
    jobs = make_run(
        tmp_path / "run",
        [
            shell_job("a", "", outputs=["a"]),
            shell_job("b", "", ["a"], ["b"]),
            shell_job("c", "", ["b"], ["c"]),
            shell_job("d", "", [], ["d"]),
            shell_job("e", "", [], ["e"]),
            shell_job("f", "", [], ["f"]),
            shell_job("g", "", [], ["g"]),
        ],
    )
    run_dir = tmp_path / "run"
    state = slurm.slurm_state_dir(run_dir)
    state.mkdir(parents=True)
    jobwrap.record_path(run_dir, "a").parent.mkdir(parents=True)
    ids = {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6"}  # g never submitted
    slurm._append_lines(state / "submissions.tsv", [f"{k}\t{v}\tt" for k, v in ids.items()])

    def record(job_id, slurm_id, code):
        jobwrap.record_path(run_dir, job_id).write_text(
            json.dumps(
                {
                    "format": 1,
                    "job": job_id,
                    "attempt": 1,
                    "exit_code": code,
                    "signal": "",
                    "host": "n1",
                    "started": 1.0,
                    "ended": 2.0,
                    "slurm_job_id": slurm_id,
                }
            )
        )

    record("a", ids["a"], 0)
    record("b", ids["b"], 2)
    record("d", "999", 0)  # a stale record of an earlier submission of d must not count

    def fake_squeue(slurm_ids):
        wanted = set(slurm_ids)
        return {k: v for k, v in queue.items() if k in wanted}

    monkeypatch.setattr(slurm, "squeue_states", fake_squeue)
    monkeypatch.setattr(slurm, "sacct_states", lambda slurm_ids: accounting)
    return run_dir, jobs


def test_status_combines_records_queue_and_inference(tmp_path, monkeypatch):
    queue = {"4": ("RUNNING", "None"), "5": ("PENDING", "Resources")}
    run_dir, jobs = _fake_run(tmp_path, monkeypatch, queue, accounting=None)
    statuses = slurm.collect_status(run_dir, jobs)
    states = {k: v.state for k, v in statuses.items()}
    assert states == {
        "a": "done",
        "b": "failed",
        "c": "blocked",
        "d": "running",
        "e": "pending",
        "f": "lost",
        "g": "unsubmitted",
    }
    assert statuses["b"].exit_code == 2 and "parent b" in statuses["c"].reason
    assert "exit code 2 after 1 attempt(s)" in statuses["b"].reason
    assert set(states.values()) <= set(common.JOB_STATES)


def test_status_uses_accounting_and_remembers_squeue_end_states(tmp_path, monkeypatch):
    queue = {"3": ("CANCELLED", "DependencyNeverSatisfied"), "4": ("TIMEOUT", "TimeLimit")}
    run_dir, jobs = _fake_run(
        tmp_path, monkeypatch, queue, accounting={"6": ("CANCELLED", 0), "5": ("OUT_OF_MEMORY", 0)}
    )
    states = {k: v.state for k, v in slurm.collect_status(run_dir, jobs).items()}
    assert (states["c"], states["d"], states["e"], states["f"]) == ("blocked", "failed", "failed", "cancelled")
    slurm.collect_status(run_dir, jobs)  # seen twice, remembered once
    observed = (slurm.slurm_state_dir(run_dir) / "observed.tsv").read_text().splitlines()
    assert sorted(observed) == ["3\tCANCELLED\tDependencyNeverSatisfied", "4\tTIMEOUT\tTimeLimit"]
    # once squeue has forgotten the jobs, the observed end states still hold
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {})
    monkeypatch.setattr(slurm, "sacct_states", lambda ids: None)
    states = {k: v.state for k, v in slurm.collect_status(run_dir, jobs).items()}
    assert (states["c"], states["d"], states["f"]) == ("blocked", "failed", "lost")


def test_resume_selects_unfinished_jobs_and_replaces_queued_descendants(tmp_path, monkeypatch):
    # c still waits (PENDING) on the failed b: it is cancelled and submitted again with b
    queue = {"3": ("PENDING", "Dependency"), "4": ("RUNNING", "None"), "5": ("PENDING", "Resources")}
    run_dir, jobs = _fake_run(tmp_path, monkeypatch, queue)
    (run_dir / "data" / "a").write_text("x")
    calls, submitted = [], {}
    monkeypatch.setattr(slurm, "_slurm", lambda argv, check=True: calls.append(argv))

    def fake_submit(run, jobs, options, *, selected, live):
        submitted.update(selected=selected, live=live, options=options)
        return {job_id: str(100 + i) for i, job_id in enumerate(sorted(selected))}

    monkeypatch.setattr(slurm, "submit", fake_submit)
    assert slurm.resume(run_dir, jobs, engine_args("--account", "x")) == 0
    assert submitted["selected"] == {"b", "c", "f", "g"}
    assert submitted["live"] == {"d": "4", "e": "5"}
    assert submitted["options"].account == "x"
    assert calls == [["scancel", "3"]]
    # a finished job whose output is gone runs again, with everything still queued below it
    (run_dir / "data" / "a").unlink()
    queue["2"] = ("PENDING", "Dependency")
    jobwrap.record_path(run_dir, "b").unlink()
    slurm.resume(run_dir, jobs, engine_args())
    assert submitted["selected"] >= {"a", "b", "c"}


def test_run_again_refuses_live_jobs_and_keeps_old_bookkeeping(tmp_path, monkeypatch):
    run_dir, jobs = _fake_run(tmp_path, monkeypatch, {"4": ("RUNNING", "None")})
    with pytest.raises(ConfigError, match="still has 1 job"):
        slurm.run(run_dir, jobs, engine_args())
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {})
    submitted = []
    monkeypatch.setattr(slurm, "submit", lambda run, jobs, options: submitted.append(options) or {"a": "7"})
    assert slurm.run(run_dir, jobs, engine_args("--partition", "p")) == 0
    assert submitted[0].partition == "p" and not slurm.submissions(run_dir)
    archived = [p.name for p in (run_dir / "state").iterdir() if p.name.startswith("slurm.")]
    assert len(archived) == 1 and (run_dir / "state" / archived[0] / "submissions.tsv").is_file()


def test_sacct_parsing_and_disabled_accounting(monkeypatch):
    answers = []

    def fake_run(argv, **kwargs):
        assert argv[0] == "sacct" and "--jobs=12,13,14" in argv
        return subprocess.CompletedProcess(argv, *answers.pop(0))

    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    answers.append((0, "12|COMPLETED|0:0\n13|CANCELLED by 0|0:15\n14|FAILED|3:0\n", ""))
    assert slurm.sacct_states(["12", "13", "14"]) == {
        "12": ("COMPLETED", 0),
        "13": ("CANCELLED", 0),
        "14": ("FAILED", 3),
    }
    answers.append((1, "", "Slurm accounting storage is disabled\n"))
    assert slurm.sacct_states(["12", "13", "14"]) is None


def test_wrapper_records_exit_code_retries_and_signal(tmp_path):
    wrapper = jobwrap.install(tmp_path)
    exit_file = jobwrap.record_path(tmp_path, "x")
    env = dict(os.environ, SLURM_JOB_ID="42")
    result = subprocess.run(
        ["bash", str(wrapper), str(exit_file), "x", "1", "3", "sh", "-c", "echo try; exit 3"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 3 and result.stdout.splitlines().count("try") == 3
    assert "SLURM_JOB_ID=42" in result.stdout and result.stdout.count("=== x attempt ") == 3
    record = jobwrap.read_record(tmp_path, "x")
    assert (record["slurm_job_id"], record["exit_code"], record["attempt"], record["job"]) == ("42", 3, 3, "x")
    assert record["format"] == jobwrap.RECORD_FORMAT and record["started"] <= record["ended"]
    # exit code 2 (usage or input error) would fail the same way again: no retry
    result = subprocess.run(
        ["bash", str(wrapper), str(exit_file), "x", "1", "3", "sh", "-c", "exit 2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and jobwrap.read_record(tmp_path, "x")["attempt"] == 1

    # SIGTERM (time limit, cancel) is passed on; the job's own exit code is kept
    child = "trap 'echo saved; exit 3' TERM; echo ready; while true; do sleep 0.1; done"
    process = subprocess.Popen(
        ["bash", str(wrapper), str(exit_file), "x", "1", "1", "sh", "-c", child],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    while "ready" not in lines and len(lines) < 20:
        lines.append(process.stdout.readline().strip())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 3
    assert "saved" in process.stdout.read()
    record = json.loads(exit_file.read_text())
    assert (record["exit_code"], record["signal"]) == (3, "TERM")

    # A record cut short (a crash in the middle of its write) counts as none, never as a wrong one.
    text = exit_file.read_text()
    for cut in (0, 1, len(text) // 2, len(text) - 3):
        exit_file.write_text(text[:cut])
        assert jobwrap.read_record(tmp_path, "x") is None
    exit_file.write_text(text)
    assert jobwrap.read_record(tmp_path, "x")["exit_code"] == 3
    jobwrap.record_path(tmp_path, "y").write_text(text)
    assert jobwrap.read_record(tmp_path, "y") is None  # another job's record under its name: none either


# -- against a real SLURM cluster -------------------------------------------------------


def _slurm_problem():
    """None when a SLURM cluster answers and has a usable node, else the reason."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (no sbatch on PATH); scripts/slurm/ci-setup.sh installs and starts one"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer ({exc})"
    if "UP" not in ping.stdout:
        return (
            f"no slurmctld answers 'scontrol ping' ({(ping.stderr or ping.stdout).strip()[:200]}); "
            "start one with scripts/slurm/ci-setup.sh"
        )
    usable = [s for s in nodes.stdout.split() if s.rstrip("*") in ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return f"no SLURM node is up (sinfo: {nodes.stdout.strip()!r})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    conf = Path(os.environ.get("INCLINET_SLURM_DIR", "/tmp/inclinet-slurm")) / "slurm.conf"
    saved = os.environ.get("SLURM_CONF")
    if saved is None and not Path("/etc/slurm/slurm.conf").exists() and conf.exists():
        os.environ["SLURM_CONF"] = str(conf)
    problem = _slurm_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the SLURM tests cannot run: {problem}")
        pytest.skip(problem)
    yield
    if saved is None:
        os.environ.pop("SLURM_CONF", None)


@pytest.mark.slurm
def test_failure_stops_descendants_only_and_resume_completes(slurm_cluster, tmp_path):
    from workflow.cli import main as workflow_main

    run_dir = tmp_path / "run"
    jobs = make_run(
        run_dir,
        [
            shell_job("a", "echo a > a.txt", outputs=["a.txt"]),
            shell_job("b", "test -f fixed && cat a.txt > b.txt", ["a.txt"], ["b.txt"]),
            shell_job("c", "cat b.txt > c.txt", ["b.txt"], ["c.txt"]),
            shell_job("d", "cat c.txt a.txt > d.txt", ["c.txt", "a.txt"], ["d.txt"]),
            shell_job("e", "echo e > e.txt", outputs=["e.txt"]),
            shell_job("f", "cat e.txt > f.txt", ["e.txt"], ["f.txt"]),
        ],
    )
    args = engine_args("--wait", "--poll-interval", "0.5", "--wait-timeout", "120")
    assert slurm.run(run_dir, jobs, args) == 1

    statuses = slurm.collect_status(run_dir, jobs)
    states = {k: v.state for k, v in statuses.items()}
    assert states == {"a": "done", "b": "failed", "c": "blocked", "d": "blocked", "e": "done", "f": "done"}
    # SLURM itself cancelled the descendants: the dependency can never be satisfied
    assert statuses["c"].reason == "DependencyNeverSatisfied"
    assert [run_count(run_dir, j) for j in "abcdef"] == [1, 1, 0, 0, 1, 1]
    for job_id in "abef":
        log = (run_dir / "logs" / f"{job_id}.log").read_text()
        assert f"SLURM_JOB_ID={slurm.submissions(run_dir)[job_id]}" in log

    assert workflow_main(["status", str(run_dir)]) == 1
    (run_dir / "data" / "fixed").write_text("")
    # a finished job whose output is gone runs again too
    (run_dir / "data" / "f.txt").unlink()
    assert workflow_main(["resume", str(run_dir), "--wait", "--poll-interval", "0.5"]) == 0
    assert {s.state for s in slurm.collect_status(run_dir, jobs).values()} == {"done"}
    assert [run_count(run_dir, j) for j in "abcdef"] == [1, 2, 1, 1, 1, 2]
    assert (run_dir / "data" / "d.txt").read_text() == "a\na\n"
    assert workflow_main(["status", str(run_dir)]) == 0


@pytest.mark.slurm
def test_resume_retries_replaces_each_jobs_own(slurm_cluster, tmp_path):
    from workflow.cli import main as workflow_main

    run_dir = tmp_path / "run"
    jobs = make_run(run_dir, [shell_job("a", "exit 3", outputs=["a.txt"], retries=1)])
    wait = ["--wait", "--poll-interval", "0.5", "--wait-timeout", "60"]
    assert workflow_main(["resume", str(run_dir), *wait]) == 1
    assert run_count(run_dir, "a") == 2  # its own retry (--retries 1 at build)
    assert workflow_main(["resume", str(run_dir), "--retries", "0", *wait]) == 1
    assert run_count(run_dir, "a") == 3
    assert workflow_main(["resume", str(run_dir), "--retries", "2", *wait]) == 1
    assert run_count(run_dir, "a") == 6
    record = jobwrap.read_record(run_dir, "a")
    assert (record["attempt"], record["exit_code"]) == (3, 3)
    assert record["slurm_job_id"] == slurm.submissions(run_dir)["a"]
    # the override is not kept: the next resume uses the job's own retries again
    assert "retries" not in json.loads((slurm.slurm_state_dir(run_dir) / "options.json").read_text())
    assert jobs[0].retries == 1


@pytest.mark.slurm
def test_cancel_leaves_nothing_queued(slurm_cluster, tmp_path, capsys):
    from workflow.cli import main as workflow_main

    run_dir = tmp_path / "run"
    jobs = make_run(
        run_dir,
        [
            shell_job("slow", "sleep 120; echo > s.txt", outputs=["s.txt"]),
            shell_job("child", "cat s.txt > c.txt", ["s.txt"], ["c.txt"]),
            shell_job("other", "sleep 120; echo > o.txt", outputs=["o.txt"]),
        ],
    )
    assert slurm.run(run_dir, jobs, engine_args()) == 0
    assert len(our_queue(run_dir)) == 3
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and run_count(run_dir, "slow") == 0:
        time.sleep(0.3)
    assert run_count(run_dir, "slow") == 1, "the first job did not start within 30 s"

    assert workflow_main(["cancel", str(run_dir)]) == 0
    assert "cancelled 3 job(s)" in capsys.readouterr().out
    # nothing is left queued; running jobs may take a moment to finish being killed
    assert not {k: v for k, v in our_queue(run_dir).items() if v == "PENDING"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        live = {k: v for k, v in our_queue(run_dir).items() if v in ("RUNNING", "CONFIGURING", "COMPLETING")}
        states = {k: v.state for k, v in slurm.collect_status(run_dir, jobs).items()}
        if not live and not set(states.values()) & {"pending", "running"}:
            break
        time.sleep(0.3)
    assert not live, f"still running after cancel: {live}"
    assert set(states.values()) == {"cancelled"}, states
    assert run_count(run_dir, "child") == 0
    assert workflow_main(["cancel", str(run_dir)]) == 0
    assert "nothing queued or running" in capsys.readouterr().out


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_workflow_end_to_end_under_slurm(slurm_cluster, tmp_path):
    from workflow.cli import main as workflow_main
    from workflow.dag import load_jobs

    run_dir = tmp_path / "run"
    code = workflow_main(
        [
            "--synthetic",
            "24",
            "--synthetic-size",
            "64",
            "--size",
            "32",
            "--bands",
            "gri,g",
            "--models",
            "model4",
            "--tasks",
            "regression",
            "--subsamples",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--galaxies-per-job",
            "12",
            "--n-batches",
            "1",
            "--per-bin",
            "2",
            "--views",
            "1",
            "--retries",
            "0",
            "--engine",
            "slurm",
            "--output-dir",
            str(run_dir),
            # small requests override the stage defaults (16 GB, 2 cores for training), so
            # the test also fits a small CI node
            "--sbatch-option=--mem=1500M",
            "--sbatch-option=--cpus-per-task=1",
            "--wait",
            "--poll-interval",
            "1",
            "--wait-timeout",
            "400",
            "-q",
        ]
    )
    jobs = load_jobs(run_dir)
    ids = slurm.submissions(run_dir)
    logs = {job.id: (run_dir / "logs" / f"{job.id}.log").read_text() for job in jobs}
    assert code == 0, {k: v[-600:] for k, v in logs.items() if "exit code 0" not in v}
    config = WorkflowConfig.from_dict(json.loads((run_dir / "run.json").read_text())["config"])
    assert len(jobs) == sum(expected_job_counts(config, 24).values()) and set(ids) == {job.id for job in jobs}
    for job in jobs:
        assert f"SLURM_JOB_ID={ids[job.id]}" in logs[job.id], job.id
    # with gpu GRES on the cluster (the CI cluster has one fake GPU) training asks for it
    gpus = "none" if not slurm.cluster_has_gpus() else "0"
    assert f"GPUs: {gpus}" in logs["train_Uset_000_model4"] and "GPUs: none" in logs["split"]
    assert json.loads((run_dir / "state" / "slurm" / "options.json").read_text())["sbatch_options"] == [
        "--mem=1500M",
        "--cpus-per-task=1",
    ]
    manifest = json.loads((run_dir / "data" / "bundle" / "manifest.json").read_text())
    assert [member["name"] for member in manifest["members"]] == ["model4"]
    assert (run_dir / "data" / "bundle" / "model4.keras").stat().st_size > 0
    assert workflow_main(["status", str(run_dir)]) == 0


FAKE_APPTAINER = """#!/bin/sh
# Stands in for apptainer: logs its command line, then runs the command in --pwd.
echo "fake-apptainer: $*"
[ "$1" = exec ] || exit 64
shift
[ "$1" = --nv ] && shift
[ "$1" = --bind ] || exit 64
while [ "$1" = --bind ]; do
    # Every bound host folder must exist (apptainer refuses a missing bind source).
    [ -d "${2%%:*}" ] || exit 66
    shift 2
done
[ "$1" = --pwd ] || exit 64
cd "$2" || exit 65
shift 3
exec "$@"
"""


@pytest.mark.slurm
def test_container_option_runs_jobs_through_the_runtime(slurm_cluster, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # sbatch passes it on
    run_dir = tmp_path / "run"
    jobs = make_run(
        run_dir,
        [
            shell_job("a", "echo a > a.txt", outputs=["a.txt"]),
            shell_job("b", "cat a.txt > b.txt", ["a.txt"], ["b.txt"]),
        ],
    )
    # A job reading a host folder outside the run (as --hpo-foreign does) gets it bound read-only.
    outside = (tmp_path / "foreign").resolve()
    outside.mkdir()
    (outside / "catalog.csv").write_text("pgc\n1\n")
    jobs.append(
        JobSpec(
            id="c",
            stage="test",
            executable="sh",
            args=["-c", 'cat "$0/catalog.csv" > c.txt', str(outside)],
            inputs=["b.txt"],
            outputs=["c.txt"],
        )
    )
    infer_parents(jobs)
    save_jobs(run_dir, jobs)
    args = engine_args(
        "--container", "/images/inclinet.sif", "--wait", "--poll-interval", "0.5", "--wait-timeout", "60"
    )
    assert slurm.run(run_dir, jobs, args) == 0
    run = run_dir.resolve()
    for job_id in "ab":
        log = (run_dir / "logs" / f"{job_id}.log").read_text()
        assert f"fake-apptainer: exec --bind {run} --pwd {run}/data /images/inclinet.sif sh -c" in log
    log = (run_dir / "logs" / "c.log").read_text()
    assert f"fake-apptainer: exec --bind {run} --bind {outside}:{outside}:ro --pwd {run}/data" in log
    assert (run_dir / "data" / "b.txt").read_text() == "a\n"
    assert (run_dir / "data" / "c.txt").read_text() == "pgc\n1\n"


@pytest.mark.slurm
def test_refused_submission_is_reported_and_resume_submits_the_rest(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    jobs = make_run(
        run_dir,
        [
            shell_job("a", "echo a > a.txt", outputs=["a.txt"]),
            shell_job("b", "cat a.txt > b.txt", ["a.txt"], ["b.txt"]),
        ],
    )
    jobs[1].memory_mb = 10**9  # more than any node has
    save_jobs(run_dir, jobs)
    with pytest.raises(StageError, match=r"sbatch refused 1 job\(s\) \(1 submitted\): b: .*lower the request"):
        slurm.run(run_dir, jobs, engine_args())
    assert list(slurm.submissions(run_dir)) == ["a"]
    jobs[1].memory_mb = 100
    save_jobs(run_dir, jobs)
    assert slurm.resume(run_dir, jobs, engine_args("--wait", "--poll-interval", "0.5", "--wait-timeout", "60")) == 0
    assert (run_dir / "data" / "b.txt").read_text() == "a\n" and run_count(run_dir, "a") == 1


def test_missing_slurm_commands_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    run_dir = tmp_path / "run"
    jobs = make_run(run_dir, [shell_job("a", "true", outputs=["a.txt"])])
    jobs[0].executable = "/bin/sh"
    with pytest.raises(StageError, match="sbatch not found: run on a SLURM submit host"):
        slurm.submit(run_dir, jobs, slurm.SlurmOptions(request_gpus="no"))
