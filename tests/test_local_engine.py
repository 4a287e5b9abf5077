"""The local engine through its real code: failures, status, resume, SIGKILL of the runner, end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inclinet.io import atomic_write_json
from workflow import dag
from workflow.cli import main
from workflow.engines import local

REPO = Path(__file__).resolve().parents[1]

# A job that sleeps, refuses to run while the file named in its 2nd argument is missing
# (when given), then writes its outputs.
JOB_CODE = (
    "import os, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "if sys.argv[2] != '-' and not os.path.exists(sys.argv[2]):\n"
    "    print('missing', sys.argv[2]); sys.exit(3)\n"
    "for out in sys.argv[3:]:\n"
    "    open(out, 'w').write('ok')\n"
)


def fake_job(job_id, inputs=(), *, sleep=0.0, needs="-", retries=0):
    outputs = [f"{job_id}.txt"]
    return dag.JobSpec(
        id=job_id,
        stage=job_id.rstrip("0123456789"),
        executable=sys.executable,
        args=["-c", JOB_CODE, str(sleep), needs, *outputs],
        inputs=list(inputs),
        outputs=outputs,
        retries=retries,
    )


def make_run(run_dir, jobs, *, max_parallel=2, retries=0):
    dag.infer_parents(jobs)
    run_dir.mkdir(parents=True, exist_ok=True)
    dag.save_jobs(run_dir, jobs)
    atomic_write_json(
        run_dir / "run.json",
        {"engine": "local", "config": {"retries": retries}, "engine_args": {"max_parallel": max_parallel}},
    )
    return run_dir


def attempts_in_log(run_dir, job_id):
    return (run_dir / "logs" / f"{job_id}.log").read_text().count(f"=== {job_id} attempt")


def states(run_dir):
    # Temporary files of atomic writes (.tmp-*) come and go while a runner works: not states.
    return {
        p.name[:-5]: json.loads(p.read_text())["state"]
        for p in (run_dir / "state").glob("*.json")
        if not p.name.endswith(".rc.json") and p.name != "runner.json" and not p.name.startswith(".tmp-")
    }


def test_failed_job_stops_only_its_descendants_then_resume_completes(tmp_path, capsys):
    # a -> b(fails until fix.txt exists) -> d ; c independent ; e <- a, c
    jobs = [
        fake_job("a"),
        fake_job("b", ["a.txt"], needs="fix.txt", retries=1),
        fake_job("c"),
        fake_job("d", ["b.txt"]),
        fake_job("e", ["a.txt", "c.txt"]),
    ]
    run_dir = make_run(tmp_path / "run", jobs, retries=1)
    assert main(["resume", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAILED b" in out and "b.log" in out
    assert states(run_dir) == {"a": "done", "b": "failed", "c": "done", "d": "blocked", "e": "done"}
    assert attempts_in_log(run_dir, "b") == 2  # one retry
    assert not (run_dir / "logs" / "d.log").exists()

    assert main(["status", str(run_dir)]) == 1  # a job failed: the same meaning on every engine
    out = capsys.readouterr().out
    header, counts = out.splitlines()[:2]
    assert header.split()[:6] == ["UNRDY", "READY", "RUN", "DONE", "FAIL", "%DONE"]
    assert counts.split()[:6] == ["1", "0", "0", "3", "1", "60.0"] and "Failure" in counts
    assert "b.log" in out and "blocked" in out

    (run_dir / "data" / "fix.txt").write_text("fixed")
    assert main(["resume", str(run_dir)]) == 0
    assert set(states(run_dir).values()) == {"done"}
    assert {j: attempts_in_log(run_dir, j) for j in "acde"} == {"a": 1, "c": 1, "d": 1, "e": 1}
    assert attempts_in_log(run_dir, "b") == 3
    assert main(["status", str(run_dir)]) == 0
    assert "100.0 Success" in capsys.readouterr().out


def test_usage_error_is_never_retried(tmp_path):
    job = fake_job("u", retries=3)
    job.args = ["-c", "import sys; print('bad flag'); sys.exit(2)"]
    run_dir = make_run(tmp_path / "run", [job], retries=3)
    assert main(["resume", str(run_dir)]) == 1
    assert states(run_dir) == {"u": "failed"} and attempts_in_log(run_dir, "u") == 1


def test_resume_retries_replaces_each_jobs_own_retries(tmp_path, capsys):
    job = fake_job("f", retries=1)
    job.args = ["-c", "import sys; sys.exit(3)"]
    run_dir = make_run(tmp_path / "run", [job], retries=1)
    assert main(["resume", str(run_dir)]) == 1
    assert attempts_in_log(run_dir, "f") == 2  # its own retry
    assert main(["resume", str(run_dir), "--retries", "0"]) == 1
    assert attempts_in_log(run_dir, "f") == 3
    assert main(["resume", str(run_dir), "--retries", "2"]) == 1
    assert attempts_in_log(run_dir, "f") == 6
    record = json.loads((run_dir / "state" / "exit" / "f.json").read_text())
    assert (record["job"], record["attempt"], record["exit_code"], record["slurm_job_id"]) == ("f", 3, 3, "")
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--retries", "-1"]) == 2
    assert "invalid --retries" in capsys.readouterr().err


def test_status_speaks_the_common_job_states(tmp_path, capsys):
    jobs = [fake_job("a"), fake_job("b", ["a.txt"], needs="fix.txt"), fake_job("c", ["b.txt"])]
    run_dir = make_run(tmp_path / "run", jobs)
    assert main(["status", str(run_dir)]) == 0  # nothing ran yet: unsubmitted is no problem
    assert "Summary: 3 jobs; 3 unsubmitted" in capsys.readouterr().out
    assert main(["resume", str(run_dir)]) == 1
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 1
    assert "Summary: 3 jobs; 1 done, 1 failed, 1 blocked" in capsys.readouterr().out


def test_done_job_with_damaged_output_runs_again(tmp_path):
    jobs = [fake_job("a"), fake_job("b", ["a.txt"])]
    run_dir = make_run(tmp_path / "run", jobs)
    assert main(["resume", str(run_dir)]) == 0
    (run_dir / "data" / "b.txt").unlink()
    assert main(["resume", str(run_dir)]) == 0
    assert attempts_in_log(run_dir, "a") == 1 and attempts_in_log(run_dir, "b") == 2


def _wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_of_runner_then_resume_reruns_no_finished_job(tmp_path):
    # A chain a1 -> a2 -> ... -> a6 plus a slow independent job that outlives the runner.
    chain = []
    for index in range(1, 7):
        chain.append(fake_job(f"a{index}", [f"a{index - 1}.txt"] if index > 1 else [], sleep=0.3))
    slow = fake_job("slow", sleep=2.0)
    run_dir = make_run(tmp_path / "run", [slow, *chain], max_parallel=2)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runner = subprocess.Popen(
        [sys.executable, "-m", "workflow.cli", "resume", str(run_dir), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: states(run_dir).get("a3") == "done" and states(run_dir).get("slow") == "running")
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    finally:
        if runner.poll() is None:
            runner.kill()
    before = {
        job_id: json.loads((run_dir / "state" / f"{job_id}.json").read_text())
        for job_id, state in states(run_dir).items()
        if state == "done"
    }
    assert {"a1", "a2", "a3"} <= set(before)
    assert states(run_dir)["slow"] == "running"  # recorded by the dead runner; its job lives on

    assert main(["resume", str(run_dir), "-q"]) == 0
    assert set(states(run_dir).values()) == {"done"}
    for job_id, record in before.items():
        after = json.loads((run_dir / "state" / f"{job_id}.json").read_text())
        assert after["started"] == record["started"], job_id
        assert attempts_in_log(run_dir, job_id) == 1, job_id
    # The job that was running when the runner died was waited for, not started again.
    assert attempts_in_log(run_dir, "slow") == 1


def test_sigterm_to_runner_stops_jobs_and_resume_finishes(tmp_path):
    jobs = [fake_job("a", sleep=30.0), fake_job("b", ["a.txt"])]
    run_dir = make_run(tmp_path / "run", jobs)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runner = subprocess.Popen(
        [sys.executable, "-m", "workflow.cli", "resume", str(run_dir), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert _wait_for(lambda: states(run_dir).get("a") == "running")
    # The wrapper writes the attempt's first log line when it starts the job.
    assert _wait_for(lambda: attempts_in_log(run_dir, "a") == 1)
    pid = json.loads((run_dir / "state" / "a.json").read_text())["pid"]
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    assert not local._alive(pid, None)
    assert states(run_dir)["a"] == "pending"
    record = json.loads((run_dir / "state" / "exit" / "a.json").read_text())
    assert (record["job"], record["attempt"], record["signal"]) == ("a", 1, "TERM")
    assert record["exit_code"] == 128 + signal.SIGTERM  # the job was killed by the SIGTERM passed on
    # Make the job quick and resume.
    jobs[0].args[2] = "0"
    dag.save_jobs(run_dir, jobs)
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert attempts_in_log(run_dir, "a") == 2


def test_cancel_stops_the_runner_and_its_jobs(tmp_path, capsys):
    jobs = [fake_job("long", sleep=60.0), fake_job("after", ["long.txt"])]
    run_dir = make_run(tmp_path / "run", jobs)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runner = subprocess.Popen(
        [sys.executable, "-m", "workflow.cli", "resume", str(run_dir), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_for(lambda: states(run_dir).get("long") == "running")
        pid = json.loads((run_dir / "state" / "long.json").read_text())["pid"]
        assert main(["cancel", str(run_dir)]) == 0
        assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if runner.poll() is None:
            runner.kill()
    assert not local._alive(pid, None)
    # A job never started has no state file; status names both in the engines' common states.
    assert states(run_dir) == {"long": "pending"}
    rows = {row["id"]: row["state"] for row in local.collect(run_dir, dag.load_jobs(run_dir))}
    assert rows == {"long": "cancelled", "after": "unsubmitted"}
    assert "cancelled" in capsys.readouterr().out


def test_exit_3_of_a_checkpointed_job_reruns_it_without_using_a_retry(tmp_path):
    # First run: saves a "checkpoint" and exits 3 (as inclinet-train does on SIGTERM); second run finishes.
    code = (
        "import os, sys\n"
        "if not os.path.exists('ck'):\n"
        "    open('ck', 'w').write('1'); sys.exit(3)\n"
        "open('t.txt', 'w').write('ok')\n"
    )
    jobs = [
        dag.JobSpec(
            id="t",
            stage="train",
            executable=sys.executable,
            args=["-c", code],
            inputs=[],
            outputs=["t.txt"],
            checkpoint="ck",
            retries=0,
        ),
        dag.JobSpec(
            id="p",
            stage="prep",
            executable=sys.executable,
            args=["-c", "import sys; sys.exit(3)"],
            inputs=[],
            outputs=["p.txt"],
            retries=0,
        ),
    ]
    run_dir = make_run(tmp_path / "run", jobs)
    assert main(["resume", str(run_dir), "-q"]) == 1
    assert states(run_dir) == {"t": "done", "p": "failed"}  # exit 3 means "continue" only with a checkpoint
    assert attempts_in_log(run_dir, "t") == 2 and attempts_in_log(run_dir, "p") == 1


def test_parallelism_respects_declared_cores(tmp_path):
    jobs = [fake_job(f"w{i}", sleep=0.3) for i in range(4)]
    jobs[0].cores = 2
    run_dir = make_run(tmp_path / "run", jobs, max_parallel=2)
    assert main(["resume", str(run_dir), "-q"]) == 0
    spans = {}
    for job in jobs:
        record = json.loads((run_dir / "state" / f"{job.id}.json").read_text())
        spans[job.id] = (record["started"], record["ended"])
    # w0 takes both cores: nothing else overlaps it.
    for other in ("w1", "w2", "w3"):
        assert spans[other][1] <= spans["w0"][0] or spans[other][0] >= spans["w0"][1]


@pytest.mark.slow
def test_tiny_end_to_end_run_interrupted_in_training_resumes_from_its_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = [
        "--synthetic",
        "24",
        "--synthetic-size",
        "48",
        "--size",
        "32",
        "--bands",
        "g,gri",
        "--models",
        "model4",
        "--subsamples",
        "0",
        "--galaxies-per-job",
        "12",
        "--epochs",
        "12",
        "--n-batches",
        "1",
        "--per-bin",
        "2",
        "--batch-size",
        "16",
        "--views",
        "1",
        "--max-parallel",
        "2",
        "--output-dir",
        str(run_dir),
        "-q",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runner = subprocess.Popen(
        [sys.executable, "-m", "workflow.cli", *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    train_log = run_dir / "logs" / "train_Uset_000_model4.log"
    try:
        # Stop the run once the first training job has finished an epoch (its checkpoint exists).
        assert _wait_for(lambda: train_log.is_file() and "epoch 1/12" in train_log.read_text(), timeout=240)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if runner.poll() is None:
            runner.kill()
    assert states(run_dir)["train_Uset_000_model4"] == "pending"
    assert (run_dir / "data" / "models" / "Uset_000_model4.ckpt.zip").is_file()
    done_before = {job_id for job_id, state in states(run_dir).items() if state == "done"}
    assert {"synth_catalog", "split", "augment_Uset_000"} <= done_before

    assert main(["resume", str(run_dir), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"inclinet-predict --bundle {run_dir / 'data' / 'bundle'}" in out
    metrics = json.loads((run_dir / "data" / "models" / "Uset_000_model4.metrics.json").read_text())
    assert metrics["resumed"] >= 1
    assert "resuming from" in train_log.read_text()
    data = run_dir / "data"
    manifest = json.loads((data / "bundle" / "manifest.json").read_text())
    assert {m["name"] for m in manifest["members"]} == {"model4", "model4-binary"}
    assert (data / "evaluation" / "report.html").stat().st_size > 0
    jobs = dag.load_jobs(run_dir)
    assert len(jobs) == 3 + 4 + 2 + 1 + 2 + 2 + 1
    assert set(states(run_dir).values()) == {"done"}
    assert all(attempts_in_log(run_dir, job_id) == 1 for job_id in done_before)
    # Resuming a finished run starts nothing.
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert all(attempts_in_log(run_dir, job_id) == 1 for job_id in done_before)
    assert attempts_in_log(run_dir, "train_Uset_000_model4") == 2


def test_changed_output_is_detected_by_verify_and_rerun_by_resume(tmp_path, capsys):
    jobs = [fake_job("a"), fake_job("b", ["a.txt"])]
    run_dir = make_run(tmp_path / "run", jobs)
    assert main(["resume", str(run_dir), "-q"]) == 0
    record = json.loads((run_dir / "state" / "b.json").read_text())
    assert record["outputs"]["b.txt"]["size"] == 2 and len(record["outputs"]["b.txt"]["sha256"]) == 64
    assert main(["status", str(run_dir), "--verify"]) == 0
    assert "verify: all 2 outputs of 2 done jobs match" in capsys.readouterr().out
    (run_dir / "data" / "b.txt").write_text("KO")  # same size, other bytes
    assert main(["status", str(run_dir), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH b:" in out and "b.txt: content changed since the job finished" in out
    assert main(["resume", str(run_dir), "-q"]) == 0
    expected = "b: done before, but its outputs no longer match; running it again: b.txt: content changed"
    assert expected in capsys.readouterr().err
    assert attempts_in_log(run_dir, "a") == 1 and attempts_in_log(run_dir, "b") == 2
    assert (run_dir / "data" / "b.txt").read_text() == "ok"
    assert main(["status", str(run_dir), "--verify"]) == 0


def test_rerun_job_with_new_content_reruns_its_readers(tmp_path, capsys):
    # a copies the file 'seed' into a.txt; b reads a.txt. Damage a.txt after 'seed' changed:
    # a is re-made with other content, so b must run again too.
    code = "import shutil; shutil.copy('seed', 'a.txt')"
    jobs = [
        dag.JobSpec(id="a", stage="prep", executable=sys.executable, args=["-c", code], inputs=[], outputs=["a.txt"]),
        fake_job("b", ["a.txt"]),
    ]
    run_dir = make_run(tmp_path / "run", jobs)
    (run_dir / "data").mkdir()
    (run_dir / "data" / "seed").write_text("one")
    assert main(["resume", str(run_dir), "-q"]) == 0
    (run_dir / "data" / "seed").write_text("two")
    (run_dir / "data" / "a.txt").unlink()
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert "b: running it again: its input a.txt was re-made with other content" in capsys.readouterr().err
    assert attempts_in_log(run_dir, "b") == 2


def test_deleted_state_is_rebuilt_from_intact_outputs(tmp_path, capsys):
    import shutil

    jobs = [fake_job("a"), fake_job("b", ["a.txt"]), fake_job("c", ["b.txt"])]
    run_dir = make_run(tmp_path / "run", jobs)
    assert main(["resume", str(run_dir), "-q"]) == 0
    shutil.rmtree(run_dir / "state")
    (run_dir / "data" / "c.txt").unlink()
    assert main(["status", str(run_dir)]) == 0
    assert "has no job records, but 2 job(s) have all their outputs on disk" in capsys.readouterr().out
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert "state rebuilt from the outputs on disk: 2 of 3 jobs" in capsys.readouterr().err
    assert {j: attempts_in_log(run_dir, j) for j in "abc"} == {"a": 1, "b": 1, "c": 2}
    assert set(states(run_dir).values()) == {"done"}


def test_sigterm_death_of_a_checkpointed_job_uses_no_retry(tmp_path):
    # Killed by SIGTERM before it could install its handler (start-up): continue, no retry used.
    code = (
        "import os, signal\n"
        "if not os.path.exists('started'):\n"
        "    open('started', 'w').write('1'); os.kill(os.getpid(), signal.SIGTERM)\n"
        "open('t.txt', 'w').write('ok')\n"
    )
    jobs = [
        dag.JobSpec(
            id="t",
            stage="train",
            executable=sys.executable,
            args=["-c", code],
            inputs=[],
            outputs=["t.txt"],
            checkpoint="ck",
            retries=0,
        )
    ]
    run_dir = make_run(tmp_path / "run", jobs)
    assert main(["resume", str(run_dir), "-q"]) == 0
    assert attempts_in_log(run_dir, "t") == 2
    assert json.loads((run_dir / "state" / "t.json").read_text()).get("failures", 0) == 0
