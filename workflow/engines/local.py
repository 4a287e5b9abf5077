"""The local engine: every job its own process on this machine, in parallel, resumable after any kill.

Bookkeeping lives in ``RUN/state/``: one JSON file per job, rewritten atomically at every
change (pending, running with the pids, done, failed, blocked), plus ``runner.json`` for
the runner itself. Each job runs under the job wrapper of every engine
(:mod:`workflow.engines.jobwrap`, a bash script) in its own session; the wrapper writes the
job's exit record to ``state/exit/<id>.json`` when it ends, even when the runner is gone.
So after the runner is killed, even with SIGKILL, ``resume`` knows which jobs finished,
adopts those still running (waiting for them), and re-runs only the rest. SIGTERM/SIGINT to
the runner is passed on to the jobs as SIGTERM: a training job saves its checkpoint and
continues from it on resume. Retries are the runner's (one attempt per wrapper), so that an
interrupted checkpointing job can be continued without using one.

The runner notices a job's end at once (a pidfd per job, :func:`os.pidfd_open`) rather than
at the next poll: with the bash wrapper that keeps the engine's cost per job to a few
milliseconds (BENCHMARKS.md, "Local-engine overhead per job").
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from inclinet.io import atomic_write_json
from inclinet.stages import DAG_STAGES
from workflow.engines import jobwrap
from workflow.engines.common import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    LOST,
    PENDING,
    RUNNING,
    UNSUBMITTED,
    USAGE_ERROR_EXIT,
    count_states,
    data_dir,
    describe_problems,
    effective_retries,
    file_problem,
    job_command,
    log_path,
    may_retry,
    output_problems,
    prepare_data_dir,
    read_json,
    record_outputs,
    state_dir,
    status_exit_code,
)

logger = logging.getLogger(__name__)

#: Flags recorded at build (``run.json``) that status/resume/cancel reuse when not given again.
RECORDED_FLAGS = ("max_parallel",)
#: Seconds a job gets to save its state after SIGTERM before it is killed.
TERM_GRACE_S = 60
POLL_S = 0.05
#: Longest sleep of the runner while every running job has a pidfd (a signal wakes it too).
IDLE_WAIT_S = 1.0
#: Exit code of a job stopped by SIGTERM after saving its checkpoint (inclinet-train):
#: rerunning it continues from the checkpoint (docs/architecture.md).
CHECKPOINTED_EXIT = 3
#: Exit codes of a job stopped by SIGTERM: the wrapper's (128 + 15, as the shell reports it)
#: and Python's for a process it started itself (-15).
TERMINATED_EXITS = (128 + signal.SIGTERM, -signal.SIGTERM)
MAX_INTERRUPTIONS = 10
STAGE_ORDER = DAG_STAGES  # earlier stages are started first


def add_arguments(parser):
    parser.add_argument(
        "--max-parallel",
        type=int,
        metavar="CORES",
        help="cores the local engine may use at once (default: all of this machine)",
    )
    return parser


# -- small process helpers ----------------------------------------------------------------


def _process_start(pid):
    """Start time of ``pid`` in clock ticks (from /proc), or None when it is not running."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid, start):
    """True when ``pid`` runs and is the same process that was recorded (not a reused pid)."""
    if not pid:
        return False
    now = _process_start(pid)
    if now is None:
        if start is not None or not os.path.isdir("/proc"):
            try:
                os.kill(pid, 0)
            except OSError:
                return False
            return start is None
        return False
    return start is None or now == start


# -- state ------------------------------------------------------------------------------


class RunState:
    """Per-job state files of one run directory."""

    def __init__(self, run_dir):
        self.dir = state_dir(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, job_id):
        return self.dir / f"{job_id}.json"

    def get(self, job_id):
        return read_json(self.path(job_id)) or {"state": PENDING, "attempts": 0}

    def put(self, job_id, record):
        # Atomic, and lean (one temporary name per job: only the runner writes state
        # files), since it happens twice per job (BENCHMARKS.md, local-engine overhead).
        path = self.path(job_id)
        tmp = path.with_name(f".tmp-{path.name}")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(tmp, path)

    def runner(self):
        return read_json(self.dir / "runner.json")

    def claim_runner(self):
        """Record this process as the run's runner; refuse when another live runner holds it."""
        from inclinet.errors import ConfigError

        current = self.runner()
        if current and current.get("pid") != os.getpid() and _alive(current.get("pid"), current.get("pid_start")):
            raise ConfigError(
                f"run {self.dir.parent} is being run by process {current['pid']}; wait for it, "
                f"or stop it with 'run_workflow.py cancel {self.dir.parent}'"
            )
        atomic_write_json(
            self.dir / "runner.json",
            {"pid": os.getpid(), "pid_start": _process_start(os.getpid()), "started": time.time()},
        )

    def release_runner(self):
        current = self.runner()
        if current and current.get("pid") == os.getpid():
            (self.dir / "runner.json").unlink(missing_ok=True)


# -- the scheduler ----------------------------------------------------------------------


class _Running:
    def __init__(self, job, attempt, pid, pid_start, process=None, started=None):
        self.job, self.attempt, self.pid, self.pid_start = job, attempt, pid, pid_start
        self.process = process
        self.started = started or time.time()
        #: A pidfd of a job this runner started: readable once the process has ended.
        self.pidfd = _pidfd(process.pid) if process is not None else None

    def finished(self):
        if self.process is not None:
            return self.process.poll() is not None
        return not _alive(self.pid, self.pid_start)

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pidfd(pid):
    """A pidfd of ``pid`` (Linux >= 5.3), or None where there is none: the runner then polls."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait_for_change(running, timeout):
    """Sleep until a job of ``running`` ends (pidfd readable), a signal arrives, or ``timeout`` passes."""
    fds = [r.pidfd for r in running if r.pidfd is not None]
    if not fds or len(fds) < len(running):
        # Adopted jobs (from a dead runner) have no pidfd of ours: poll them.
        timeout = min(timeout, POLL_S)
    if not fds:
        time.sleep(timeout)
        return
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(timeout * 1000)


class LocalRunner:
    """Runs the jobs of one run directory (see the module docstring)."""

    def __init__(self, run_dir, jobs, *, max_parallel=None, retries=None, progress=None):
        self.run_dir = Path(run_dir)
        self.jobs = {job.id: job for job in jobs}
        self.order = [job.id for job in jobs]
        rank = {stage: i for i, stage in enumerate(STAGE_ORDER)}
        position = {job_id: i for i, job_id in enumerate(self.order)}
        self.priority = sorted(self.order, key=lambda j: (rank.get(self.jobs[j].stage, len(rank)), position[j]))
        self.children = {job.id: [] for job in jobs}
        for job in jobs:
            for parent in job.parents:
                self.children[parent].append(job.id)
        self.max_parallel = max(1, max_parallel or os.cpu_count() or 1)
        #: ``resume --retries N``: the retries of every job on this run (None: each job's own).
        self.retries = retries
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.state = RunState(run_dir)
        self.status = {}
        self.records = {}
        self.running = {}
        self.stop_signal = None

    # bookkeeping
    def _set(self, job_id, state, **changes):
        record = dict(self.records.get(job_id) or self.state.get(job_id))
        record.update(changes)
        record["state"] = state
        self.records[job_id] = record
        self.status[job_id] = state
        self.state.put(job_id, record)

    def _cores(self, job):
        return min(max(1, job.cores), self.max_parallel)

    def _retries(self, job):
        return effective_retries(job, self.retries)

    def _recover(self):
        """Read the state of every job; adopt jobs a dead runner left running."""
        if not self._has_records():
            self._rebuild_state()
        for job_id in self.order:
            stored = read_json(self.state.path(job_id))
            if stored is None:  # never started: pending without a state file (see job_state)
                self.records[job_id] = {"state": PENDING, "attempts": 0}
                self.status[job_id] = PENDING
                continue
            record = stored
            self.records[job_id] = record
            job = self.jobs[job_id]
            state = record.get("state", PENDING)
            if state == RUNNING:
                if _alive(record.get("pid"), record.get("pid_start")):
                    logger.info(
                        "%s: still running from an earlier runner (pid %s); waiting for it", job_id, record.get("pid")
                    )
                    self.running[job_id] = _Running(
                        job,
                        record.get("attempts", 1),
                        record["pid"],
                        record.get("pid_start"),
                        started=record.get("started"),
                    )
                    self.status[job_id] = RUNNING
                    continue
                state = self._outcome_of_dead(job_id, record)
            previous = None
            if state == DONE:
                problems = output_problems(job, self.run_dir, record.get("outputs"))
                if not problems:
                    self.status[job_id] = DONE
                    continue
                logger.warning(
                    "%s: done before, but its outputs no longer match; running it again: %s",
                    job_id,
                    describe_problems(problems),
                )
                previous = record.get("outputs")
            self.records[job_id] = {"state": PENDING, "attempts": 0}
            self._set(job_id, PENDING, previous_outputs=previous)

    def _has_records(self):
        return any(self.state.path(job_id).exists() for job_id in self.order)

    def _rebuild_state(self):
        """``state/`` was lost: count as done the jobs whose outputs are all on disk and intact.

        A job is adopted only when its parents were and every declared output opens (zip
        members pass their CRC check); outputs are written atomically, so a complete set
        means the job finished. Everything else runs.
        """
        base = data_dir(self.run_dir)
        if not any((base / lfn).exists() for job in self.jobs.values() for lfn in job.outputs):
            return
        adopted = set()
        changed = True
        while changed:
            changed = False
            for job_id in self.priority:
                job = self.jobs[job_id]
                if job_id in adopted or not all(p in adopted for p in job.parents):
                    continue
                if all(file_problem(base / lfn, deep=True) is None for lfn in job.outputs):
                    adopted.add(job_id)
                    changed = True
        for job_id in adopted:
            self._set(job_id, DONE, attempts=0, rebuilt=True, outputs=record_outputs(self.jobs[job_id], self.run_dir))
        logger.warning(
            "%s has no job records (was it deleted?): state rebuilt from the outputs on disk: "
            "%d of %d jobs have all their outputs intact and count as done; the other %d will run",
            self.state.dir,
            len(adopted),
            len(self.order),
            len(self.order) - len(adopted),
        )

    def _outcome_of_dead(self, job_id, record):
        rc = jobwrap.read_record(self.run_dir, job_id)
        if (
            rc
            and rc.get("attempt") == record.get("attempts")
            and rc["exit_code"] == 0
            and not any(file_problem(data_dir(self.run_dir) / lfn) for lfn in self.jobs[job_id].outputs)
        ):
            self._set(
                job_id,
                DONE,
                returncode=0,
                ended=rc.get("ended"),
                outputs=self._record(job_id),
                duration=(rc.get("ended") or time.time()) - (record.get("started") or time.time()),
            )
            return DONE
        return PENDING

    def _ready(self):
        """Runnable jobs, earlier stages first: they unblock the most work (augment before train)."""
        for job_id in self.priority:
            if self.status[job_id] == PENDING and all(self.status[p] == DONE for p in self.jobs[job_id].parents):
                yield self.jobs[job_id]

    def _used_cores(self):
        return sum(self._cores(r.job) for r in self.running.values())

    def _start(self, job):
        attempt = int(self.records[job.id].get("attempts", 0)) + 1
        log = log_path(self.run_dir, job)
        jobwrap.record_path(self.run_dir, job.id).unlink(missing_ok=True)
        # One attempt per wrapper: the runner decides on retries (see the module docstring).
        wrapper = jobwrap.command(self.run_dir, job.id, attempt, 1, job_command(job))
        env = dict(self._env)
        env.setdefault("OMP_NUM_THREADS", str(self._cores(job)))
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(self._cores(job)))
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                wrapper,
                cwd=self._data,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        started = time.time()
        pid_start = _process_start(process.pid)
        self.running[job.id] = _Running(job, attempt, process.pid, pid_start, process, started)
        self._set(
            job.id,
            RUNNING,
            attempts=attempt,
            pid=process.pid,
            pid_start=pid_start,
            runner_pid=os.getpid(),
            started=started,
            ended=None,
            returncode=None,
            log=str(log),
        )
        logger.debug("started %s (attempt %d, pid %d)", job.id, attempt, process.pid)

    def _reap(self, job_id):
        running = self.running.pop(job_id)
        running.close()
        job = running.job
        rc = jobwrap.read_record(self.run_dir, job_id)
        if rc and rc.get("attempt") == running.attempt:
            code = rc["exit_code"]
        elif running.process is not None:
            code = running.process.returncode
        else:
            code = None  # an adopted job whose wrapper was killed: unknown, run it again
        ended = time.time()
        duration = ended - running.started
        if code == 0:
            problems = [
                (lfn, reason)
                for lfn in job.outputs
                if (reason := file_problem(data_dir(self.run_dir) / lfn)) is not None
            ]
            if problems:
                logger.error(
                    "%s: exited 0 but its declared outputs are not usable: %s", job_id, describe_problems(problems)
                )
                code = -1
        if code == 0:
            outputs = self._record(job_id)
            self._invalidate_readers(job_id, outputs)
            self._set(
                job_id, DONE, returncode=0, ended=ended, duration=duration, outputs=outputs, previous_outputs=None
            )
            return True
        if self.stop_signal is not None:
            self._set(job_id, PENDING, returncode=code, ended=ended, duration=duration, interrupted=True)
            return False
        record = self.records[job_id]
        interrupted = code == CHECKPOINTED_EXIT or code in TERMINATED_EXITS
        if interrupted and job.checkpoint and record.get("interruptions", 0) < MAX_INTERRUPTIONS:
            # Stopped from outside (after saving its checkpoint, or by a SIGTERM that came
            # before its handler was in place): run it again, no retry used.
            logger.warning("%s was interrupted (checkpoint saved); continuing it", job_id)
            self._set(
                job_id,
                PENDING,
                returncode=code,
                ended=ended,
                duration=duration,
                interruptions=record.get("interruptions", 0) + 1,
            )
            return False
        failures = record.get("failures", 0) + 1
        if code == USAGE_ERROR_EXIT:
            logger.error("%s: exit code 2 is a usage or input error; not retrying", job_id)
        if may_retry(code, failures, self._retries(job)):
            logger.warning(
                "%s failed (exit %s, attempt %d); retrying; log: %s",
                job_id,
                code,
                running.attempt,
                log_path(self.run_dir, job),
            )
            self._set(job_id, PENDING, returncode=code, ended=ended, duration=duration, failures=failures)
            return False
        logger.error(
            "%s failed (exit %s) after %d attempt(s); log: %s",
            job_id,
            code,
            running.attempt,
            log_path(self.run_dir, job),
        )
        self._set(job_id, FAILED, returncode=code, ended=ended, duration=duration, failures=failures)
        self._block_descendants(job_id)
        return False

    def _record(self, job_id):
        try:
            return record_outputs(self.jobs[job_id], self.run_dir)
        except OSError as exc:  # vanished between the check and the checksum: re-run
            logger.warning("%s: cannot record its outputs (%s)", job_id, exc)
            return None

    def _invalidate_readers(self, job_id, outputs):
        """A re-run whose outputs differ from the earlier ones: jobs that read those re-run too."""
        previous = self.records[job_id].get("previous_outputs") or {}
        changed = sorted(
            lfn
            for lfn, old in previous.items()
            if old and outputs and outputs.get(lfn, {}).get("sha256") != old.get("sha256")
        )
        if not changed:
            return
        for child in self.children[job_id]:
            read = sorted(set(changed) & set(self.jobs[child].inputs))
            if read and self.status.get(child) == DONE:
                logger.warning(
                    "%s: running it again: its input %s was re-made with other content", child, ", ".join(read)
                )
                self._set(child, PENDING, previous_outputs=self.records[child].get("outputs"), attempts=0)

    def _block_descendants(self, job_id):
        stack = list(self.children[job_id])
        while stack:
            child = stack.pop()
            if self.status.get(child) == PENDING:
                self._set(child, BLOCKED, blocked_by=job_id)
                stack.extend(self.children[child])

    def _on_signal(self, signum, _frame):
        if self.stop_signal is None:
            self.stop_signal = signum
            logger.warning(
                "received %s: stopping the running jobs (they may save checkpoints)", signal.Signals(signum).name
            )
            for running in list(self.running.values()):
                _signal(running.pid, signal.SIGTERM)

    def execute(self):
        """Run every job that is not done; return the number of failed jobs (or -signal)."""
        self.state.claim_runner()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            prepare_data_dir(self.run_dir, list(self.jobs.values()))
            jobwrap.install(self.run_dir)
            log_path(self.run_dir, "x").parent.mkdir(parents=True, exist_ok=True)
            self._data = data_dir(self.run_dir)
            self._env = dict(
                os.environ,
                TF_NUM_INTEROP_THREADS=os.environ.get("TF_NUM_INTEROP_THREADS", "1"),
                TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            )
            self._recover()
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.state.release_runner()

    def _loop(self):
        total = len(self.order)
        bar = _progress_bar(total, sum(1 for s in self.status.values() if s == DONE), self.progress)
        done_before = sum(1 for s in self.status.values() if s == DONE)
        term_sent = None
        try:
            while True:
                for job_id in [j for j, r in self.running.items() if r.finished()]:
                    ok = self._reap(job_id)
                    if ok:
                        bar.update(1)
                        done = sum(1 for s in self.status.values() if s == DONE)
                        if not self.progress:
                            logger.info(
                                "[%d/%d] %s done (%.1f s)",
                                done,
                                total,
                                job_id,
                                self.records[job_id].get("duration") or 0,
                            )
                if self.stop_signal is not None:
                    if not self.running:
                        break
                    term_sent = term_sent or time.time()
                    if time.time() - term_sent > TERM_GRACE_S:
                        for running in self.running.values():
                            _signal(running.pid, signal.SIGKILL, group=True)
                    _wait_for_change(list(self.running.values()), POLL_S)
                    continue
                free = self.max_parallel - self._used_cores()
                for job in self._ready():
                    if free <= 0:
                        break
                    if self._cores(job) <= free:
                        self._start(job)
                        free -= self._cores(job)
                if not self.running:
                    break
                _wait_for_change(list(self.running.values()), IDLE_WAIT_S)
        finally:
            for running in self.running.values():
                running.close()
            bar.close()
        if self.stop_signal is not None:
            return -int(self.stop_signal)
        logger.debug("%d jobs were already done", done_before)
        return sum(1 for s in self.status.values() if s == FAILED)


def _signal(pid, sig, group=False):
    try:
        if group:
            os.killpg(os.getpgid(pid), sig)
        else:
            os.kill(pid, sig)
    except OSError:
        pass


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total, initial, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="job", dynamic_ncols=True)


# -- summaries and status ---------------------------------------------------------------


def job_state(run_dir, job_id, record, *, runner_alive=False):
    """The state (:data:`~workflow.engines.common.JOB_STATES`) of a job from its state file ``record``.

    No state file: ``pending`` while a runner works on the run, else ``unsubmitted``;
    pending after a stop (``cancel``, a signal): ``cancelled``; recorded running but its
    process is gone (the runner was killed): its exit record says ``done`` or ``failed``,
    and without one it is ``lost``.
    """
    if record is None:
        return PENDING if runner_alive else UNSUBMITTED
    current = record.get("state", PENDING)
    if current == PENDING and record.get("interrupted"):
        return CANCELLED
    if current == RUNNING and not _alive(record.get("pid"), record.get("pid_start")):
        rc = jobwrap.read_record(run_dir, job_id)
        if rc is None or rc.get("attempt") != record.get("attempts"):
            return LOST
        return DONE if rc["exit_code"] == 0 else FAILED
    return current


def collect(run_dir, jobs):
    """Per-job records (state file + derived fields) of a run, in DAG order."""
    state = RunState(run_dir)
    runner = state.runner()
    runner_alive = bool(runner and _alive(runner.get("pid"), runner.get("pid_start")))
    rows = []
    for job in jobs:
        stored = read_json(state.path(job.id))
        record = stored or {"attempts": 0}
        current = job_state(run_dir, job.id, stored, runner_alive=runner_alive)
        duration = record.get("duration")
        if current == RUNNING and record.get("started"):
            duration = time.time() - record["started"]
        rows.append(
            {
                "id": job.id,
                "stage": job.stage,
                "state": current,
                "attempts": record.get("attempts", 0),
                "duration": duration,
                "returncode": record.get("returncode"),
                "started": record.get("started"),
                "ended": record.get("ended"),
                "log": str(log_path(run_dir, job)),
                "parents": job.parents,
            }
        )
    return rows


def summary_text(rows):
    """Per-stage wall time (first start to last end), busy time and failures."""
    lines = ["stage        jobs  done  failed  wall_s   busy_s"]
    stages = []
    for row in rows:
        if row["stage"] not in stages:
            stages.append(row["stage"])
    for stage in stages:
        mine = [r for r in rows if r["stage"] == stage]
        starts = [r["started"] for r in mine if r["started"]]
        ends = [r["ended"] for r in mine if r["ended"]]
        wall = (max(ends) - min(starts)) if starts and ends else 0.0
        busy = sum(r["duration"] or 0 for r in mine)
        lines.append(
            f"{stage:<12} {len(mine):>4}  {sum(r['state'] == DONE for r in mine):>4}  "
            f"{sum(r['state'] == FAILED for r in mine):>6}  {wall:>6.1f}  {busy:>7.1f}"
        )
    failed = [r for r in rows if r["state"] == FAILED]
    blocked = [r for r in rows if r["state"] == BLOCKED]
    for row in failed:
        lines.append(f"FAILED {row['id']} (exit {row['returncode']}, {row['attempts']} attempt(s)): {row['log']}")
    if blocked:
        lines.append(f"{len(blocked)} job(s) not run because a job they depend on failed")
    return "\n".join(lines)


def status_text(run_dir, rows, *, table=True):
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    finished = {r["id"] for r in rows if r["state"] == DONE}
    waiting = (UNSUBMITTED, PENDING, CANCELLED, LOST)
    ready = {r["id"] for r in rows if r["state"] in waiting and all(p in finished for p in r["parents"])}
    n_running = counts.get(RUNNING, 0)
    n_ready = len(ready)
    n_unready = sum(1 for r in rows if r["state"] in (*waiting, BLOCKED)) - n_ready
    n_done, n_failed = counts.get(DONE, 0), counts.get(FAILED, 0)
    total = len(rows)
    percent = 100.0 * n_done / total if total else 100.0
    runner = RunState(run_dir).runner()
    runner_alive = bool(runner and _alive(runner.get("pid"), runner.get("pid_start")))
    if n_done == total:
        overall = "Success"
    elif runner_alive:
        overall = "Running"
    elif n_failed:
        overall = "Failure"
    else:
        overall = "Stopped"
    lines = [
        f"{'UNRDY':>6} {'READY':>6} {'RUN':>6} {'DONE':>6} {'FAIL':>6} {'%DONE':>6} STATE    RUN",
        f"{n_unready:>6} {n_ready:>6} {n_running:>6} {n_done:>6} {n_failed:>6} {percent:>6.1f} {overall:<8} {run_dir}",
        f"Summary: {total} jobs; {count_states(r['state'] for r in rows)}",
    ]
    if table:
        lines.append("")
        lines.append(f"{'JOB':<28} {'STATE':<10} {'TRY':>3} {'SECONDS':>8}  LOG")
        for row in rows:
            seconds = f"{row['duration']:.1f}" if row["duration"] is not None else "-"
            lines.append(f"{row['id']:<28} {row['state']:<10} {row['attempts']:>3} {seconds:>8}  {row['log']}")
    return "\n".join(lines)


# -- engine interface -------------------------------------------------------------------


def _finish(run_dir, jobs, outcome):
    rows = collect(run_dir, jobs)
    print(summary_text(rows))
    if outcome < 0:
        print(f"stopped by {signal.Signals(-outcome).name}; continue with 'run_workflow.py resume {run_dir}'")
        return 128 - outcome
    if outcome:
        print(f"{outcome} job(s) failed; fix the cause (see the logs above) and run 'run_workflow.py resume {run_dir}'")
        return 1
    print(f"all {len(rows)} jobs done in {run_dir}")
    return 0


def run(run_dir, jobs, args):
    """Run every job of ``jobs`` on this machine; exit code 0 when all finished."""
    runner = LocalRunner(
        run_dir, jobs, max_parallel=getattr(args, "max_parallel", None), retries=getattr(args, "retries_override", None)
    )
    return _finish(run_dir, jobs, runner.execute())


def resume(run_dir, jobs, args):
    """Re-run failed and unfinished jobs, keeping finished ones whose outputs are intact."""
    return run(run_dir, jobs, args)


def status(run_dir, jobs, args):
    """Print the state of a run; with ``--verify`` also re-check every output of every done job."""
    rows = collect(run_dir, jobs)
    print(status_text(run_dir, rows))
    state = RunState(run_dir)
    if not any(state.path(job.id).exists() for job in jobs):
        base = data_dir(run_dir)
        present = sum(1 for job in jobs if job.outputs and all((base / lfn).exists() for lfn in job.outputs))
        if present:
            print(
                f"note: {state.dir} has no job records, but {present} job(s) have all their outputs on disk; "
                f"'run_workflow.py resume {run_dir}' rebuilds the state from the intact ones"
            )
    code = status_exit_code(row["state"] for row in rows)
    if getattr(args, "verify", False):
        return max(code, verify(run_dir, jobs, rows))
    return code


def verify(run_dir, jobs, rows=None):
    """Re-read every output of every done job and compare size and SHA-256 with its record.

    Prints one line per output that no longer matches; returns 1 when there is one, else 0.
    """
    rows = rows if rows is not None else collect(run_dir, jobs)
    done = {row["id"] for row in rows if row["state"] == DONE}
    state = RunState(run_dir)
    checked, mismatched = 0, []
    for job in jobs:
        if job.id not in done:
            continue
        record = state.get(job.id)
        checked += len(job.outputs)
        for lfn, reason in output_problems(job, run_dir, record.get("outputs"), full=True):
            mismatched.append((job.id, lfn, reason))
    print("")
    for job_id, lfn, reason in mismatched:
        print(f"MISMATCH {job_id}: {data_dir(run_dir) / lfn}: {reason}")
    if mismatched:
        jobs_hit = len({m[0] for m in mismatched})
        print(
            f"verify: {len(mismatched)} of {checked} outputs of {len(done)} done jobs no longer match "
            f"({jobs_hit} job(s)); 'run_workflow.py resume {run_dir}' runs those jobs again"
        )
        return 1
    print(f"verify: all {checked} outputs of {len(done)} done jobs match their size and SHA-256")
    return 0


def cancel(run_dir, jobs, args):
    """Stop the runner of a run and every job it started (SIGTERM, then SIGKILL)."""
    state = RunState(run_dir)
    runner = state.runner()
    if runner and _alive(runner.get("pid"), runner.get("pid_start")):
        # The runner passes SIGTERM on to its jobs and records them as unfinished.
        _signal(runner["pid"], signal.SIGTERM)
        deadline = time.time() + TERM_GRACE_S + 10
        while time.time() < deadline and _alive(runner["pid"], runner.get("pid_start")):
            time.sleep(0.2)
    targets = []
    for job in jobs:
        record = state.get(job.id)
        if record.get("state") == RUNNING and _alive(record.get("pid"), record.get("pid_start")):
            _signal(record["pid"], signal.SIGTERM)
            targets.append((job.id, record))
    deadline = time.time() + TERM_GRACE_S
    while time.time() < deadline and any(_alive(r["pid"], r.get("pid_start")) for _, r in targets):
        time.sleep(0.2)
    for job_id, record in targets:
        if _alive(record["pid"], record.get("pid_start")):
            _signal(record["pid"], signal.SIGKILL, group=True)
        state.put(job_id, dict(state.get(job_id), state=PENDING, interrupted=True))
    print(
        f"cancelled run {run_dir} ({len(targets)} orphaned job(s) stopped); "
        f"continue with 'run_workflow.py resume {run_dir}'"
    )
    return 0
