"""SLURM engine: one ``sbatch`` per job chained by ``afterok`` dependencies; status, resume and cancel.

SLURM does the scheduling: every job of the DAG is submitted at once, each with
``--dependency=afterok:<its parents' SLURM ids>`` and ``--kill-on-invalid-dep=yes``, so a
failed job's descendants are cancelled by SLURM ("DependencyNeverSatisfied") and never
run, while independent branches go on. Each job's batch script is the job wrapper of every
engine (:mod:`workflow.engines.jobwrap`, ``RUN/state/jobwrap.sh``): it logs
``SLURM_JOB_ID``, runs the job's command (retrying it up to the job's retries, or
``resume --retries N``; never after exit code 2) and writes the exit record
``RUN/state/exit/<job-id>.json``, so that ``status`` works on clusters without
accounting.

Bookkeeping lives in ``RUN/state/slurm/``:

``options.json``
    the submission options (partition, account, container, ...), reused by ``resume``;
``submissions.tsv``
    append-only ``job-id<TAB>slurm-id<TAB>time`` lines; the last line of a job is current;
``cancelled.tsv`` / ``observed.tsv``
    SLURM ids cancelled by ``cancel``, and end states seen in ``squeue`` (which forgets
    jobs after ``MinJobAge``), so that ``status`` can still tell them apart later.

A job's state (one of :data:`~workflow.engines.common.JOB_STATES`) comes, in this order,
from its exit record, ``squeue``, ``sacct`` (when accounting is enabled), the two logs
above, and finally its parents: a job that never ran because an ancestor failed is
``blocked`` (SLURM's ``DependencyNeverSatisfied``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from inclinet.errors import ConfigError, InputError, StageError, invalid
from inclinet.io import atomic_write_json
from workflow.engines import common, jobwrap
from workflow.engines.common import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    LIVE_STATES,
    LOST,
    PENDING,
    RUNNING,
    UNSUBMITTED,
)

logger = logging.getLogger(__name__)

STATE_SUBDIR = "slurm"
#: States ``resume`` submits again.
RESUBMIT_STATES = (UNSUBMITTED, FAILED, CANCELLED, BLOCKED, LOST)
#: Flags recorded at build that status/resume/cancel reuse: none (``options.json`` keeps them).
RECORDED_FLAGS = ()

# SLURM job states (squeue %T / sacct State) -> the engines' job states.
_SLURM_RUNNING = {
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESIZING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "SPECIAL_EXIT",
}
_SLURM_FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
_NEVER_SATISFIED = "DependencyNeverSatisfied"
SBATCH_ATTEMPTS = 4
#: Seconds before the time limit at which a checkpointing job is told to save and stop.
CHECKPOINT_GRACE_S = 120
_TRANSIENT = ("try again", "temporarily", "timed out", "timeout", "connection refused", "busy")


# -- options ----------------------------------------------------------------------------


@dataclass
class SlurmOptions:
    """How jobs are submitted (the engine's flags); stored in ``RUN/state/slurm/options.json``."""

    partition: str | None = None
    gpu_partition: str | None = None
    account: str | None = None
    sbatch_options: list[str] = field(default_factory=list)
    container: str | None = None
    container_runtime: str = "apptainer"
    request_gpus: str = "auto"
    gpu_flag: str = "gres"
    submit_workers: int = 8
    #: ``resume --retries N``: the retries of every job of this submission instead of its own
    #: (None: each job's, from the build's ``--retries``). Not kept for later submissions.
    retries: int | None = None

    def validate(self):
        if self.container_runtime not in ("apptainer", "singularity"):
            raise invalid("--container-runtime", self.container_runtime, "apptainer or singularity")
        if self.request_gpus not in ("auto", "yes", "no"):
            raise invalid("--request-gpus", self.request_gpus, "auto, yes or no")
        if self.gpu_flag not in ("gres", "gpus"):
            raise invalid("--gpu-flag", self.gpu_flag, "gres (--gres=gpu:N) or gpus (--gpus=N)")
        if not isinstance(self.submit_workers, int) or self.submit_workers < 1:
            raise invalid("--submit-workers", self.submit_workers, "an integer >= 1")
        return self

    @classmethod
    def from_args(cls, args, base=None):
        """Options from parsed flags; flags left unset keep the values of ``base``."""
        values = dataclasses.asdict(base) if base is not None else {}
        for name in (f.name for f in dataclasses.fields(cls)):
            value = getattr(args, f"slurm_{name}", None)
            if value is not None and value != []:
                values[name] = value
        return cls(**values).validate()


def add_arguments(parser):
    """The SLURM engine's flags (all stored as ``slurm_*`` in the namespace).

    ``parser`` is a parser or an argument group (the workflow CLI passes one per engine).
    """
    group = parser
    group.add_argument(
        "--partition",
        dest="slurm_partition",
        metavar="NAME",
        help="partition of every job (default: the cluster's default partition)",
    )
    group.add_argument(
        "--gpu-partition",
        dest="slurm_gpu_partition",
        metavar="NAME",
        help="partition of the jobs that request GPUs (training, evaluation)",
    )
    group.add_argument("--account", dest="slurm_account", metavar="NAME", help="account charged for the jobs")
    group.add_argument(
        "--sbatch-option",
        dest="slurm_sbatch_options",
        action="append",
        metavar="OPTION",
        help="extra sbatch option for every job, e.g. --sbatch-option=--qos=short "
        "(repeatable; given after the engine's own options, so it overrides them)",
    )
    group.add_argument(
        "--request-gpus",
        dest="slurm_request_gpus",
        choices=("auto", "yes", "no"),
        help="ask SLURM for the GPUs of training/evaluation jobs: auto (default) = only when "
        "the cluster (or --gpu-partition) has gpu GRES",
    )
    group.add_argument(
        "--gpu-flag",
        dest="slurm_gpu_flag",
        choices=("gres", "gpus"),
        help="how GPUs are requested: gres (--gres=gpu:N, default) or gpus (--gpus=N)",
    )
    group.add_argument(
        "--container",
        dest="slurm_container",
        metavar="IMAGE",
        help="run every job inside this Apptainer/Singularity image (.sif); the image must "
        "provide the inclinet-* executables",
    )
    group.add_argument(
        "--container-runtime",
        dest="slurm_container_runtime",
        choices=("apptainer", "singularity"),
        help="container runtime for --container (default apptainer)",
    )
    group.add_argument(
        "--submit-workers",
        dest="slurm_submit_workers",
        type=int,
        metavar="N",
        help="sbatch calls in flight at once while submitting (default 8)",
    )
    group.add_argument(
        "--wait",
        dest="slurm_wait",
        action="store_true",
        help="after submitting, wait until every job has ended; exit 1 if one did not succeed",
    )
    group.add_argument(
        "--poll-interval",
        dest="slurm_poll_interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between squeue calls with --wait (default 10)",
    )
    group.add_argument(
        "--wait-timeout",
        dest="slurm_wait_timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up waiting after this many seconds (the jobs go on; default: no limit)",
    )
    return parser


# -- run-directory bookkeeping ----------------------------------------------------------


def slurm_state_dir(run_dir):
    return common.state_dir(run_dir) / STATE_SUBDIR


def save_options(run_dir, options):
    kept = {k: v for k, v in dataclasses.asdict(options).items() if k != "retries"}
    atomic_write_json(slurm_state_dir(run_dir) / "options.json", kept)


def load_options(run_dir):
    path = slurm_state_dir(run_dir) / "options.json"
    if not path.is_file():
        return SlurmOptions()
    try:
        known = {f.name for f in dataclasses.fields(SlurmOptions)} - {"retries"}
        values = json.loads(path.read_text(encoding="utf-8"))
        return SlurmOptions(**{k: v for k, v in values.items() if k in known}).validate()
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: unreadable SLURM options ({exc}); delete it and pass the flags again") from None


def _read_tsv(path):
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(line.split("\t"))
    return rows


def submissions(run_dir):
    """``{job_id: slurm_id}``: the current SLURM id of every submitted job."""
    current = {}
    for row in _read_tsv(slurm_state_dir(run_dir) / "submissions.tsv"):
        if len(row) >= 2:
            current[row[0]] = row[1]
    return current


def _append_lines(path, lines):
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


# -- SLURM commands ---------------------------------------------------------------------


def _slurm(argv, *, check=True):
    """Run a SLURM client command; return the CompletedProcess."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise StageError(f"{argv[0]} not found: run on a SLURM submit host (with slurm-client installed)") from None
    if check and result.returncode != 0:
        raise StageError(
            f"{shlex.join(argv[:3])} ... failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    return result


def squeue_states(slurm_ids):
    """``{slurm_id: (STATE, reason)}`` for the given ids that SLURM still knows (one squeue call)."""
    ids = sorted({str(i) for i in slurm_ids if i}, key=lambda s: int(s) if s.isdigit() else 0)
    if not ids:
        return {}
    result = _slurm(
        ["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T|%r"], check=False
    )
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {}
        raise StageError(f"squeue failed (exit {result.returncode}): {result.stderr.strip()}")
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def sacct_states(slurm_ids):
    """``{slurm_id: (STATE, exit_code)}`` from accounting, or ``None`` when accounting is disabled."""
    ids = [str(i) for i in slurm_ids if i]
    if not ids:
        return {}
    try:
        result = subprocess.run(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                f"--jobs={','.join(ids)}",
                "--format=JobID,State,ExitCode",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    if result.returncode != 0 or "disabled" in result.stderr + result.stdout:
        return None
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3:
            code = parts[2].split(":")[0]
            # sacct writes "CANCELLED by 123"; keep the state word.
            states[parts[0]] = (parts[1].split()[0] if parts[1] else "", int(code) if code.isdigit() else None)
    return states


def cluster_has_gpus(partition=None):
    """True when some node (of ``partition``) advertises gpu GRES."""
    argv = ["sinfo", "--noheader", "--format=%G"]
    if partition:
        argv.append(f"--partition={partition}")
    result = _slurm(argv, check=False)
    return result.returncode == 0 and "gpu" in result.stdout


# -- submission -------------------------------------------------------------------------


def _format_time(seconds):
    seconds = max(60, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _outermost(folders):
    """``folders`` without those inside another of them, sorted."""
    kept = []
    for folder in sorted(set(folders), key=lambda f: (len(f.parts), str(f))):
        if not any(folder == k or k in folder.parents for k in kept):
            kept.append(folder)
    return sorted(kept)


def external_folders(job, run_dir):
    """Host folders outside ``run_dir`` that ``job`` reads: what a container must bind besides the run.

    Two kinds: the targets of the raw-input links in ``RUN/data`` (``--data-path`` images, a
    bundle given by path), and absolute paths among the job's arguments that exist on the
    submit host (``--foreign /abs/folder``, ``--pack ... -p /abs/images``). A file gives its
    folder, a folder itself; nested folders are bound once, through the outermost.
    """
    run_dir = Path(run_dir).resolve()
    base = common.data_dir(run_dir)
    found = []

    def outside(path):
        return path != run_dir and run_dir not in path.parents

    for lfn in job.inputs:
        link = base / lfn
        if link.is_symlink():
            target = link.resolve()
            if outside(target):
                found.append(target if target.is_dir() else target.parent)
    for arg in job.args:
        text = str(arg)
        if not text.startswith("/"):
            continue
        path = Path(text)
        if path.exists():
            path = path.resolve()
            if outside(path):
                found.append(path if path.is_dir() else path.parent)
    return _outermost(found)


def job_command(job, run_dir, options, *, use_gpus=False):
    """The command the wrapper runs: the job's executable, inside the container if asked for.

    In a container the run directory is bound read-write, and every host folder outside it
    that the job reads (:func:`external_folders`) is bound read-only at the same path.
    """
    if not options.container:
        return common.job_command(job)
    run_dir = Path(run_dir).resolve()
    wrapper = [options.container_runtime, "exec"]
    if use_gpus and job.gpus:
        wrapper.append("--nv")
    wrapper += ["--bind", str(run_dir)]
    for folder in external_folders(job, run_dir):
        wrapper += ["--bind", f"{folder}:{folder}:ro"]
    wrapper += ["--pwd", str(common.data_dir(run_dir)), options.container]
    # Inside the image the executables are on PATH; host paths of a virtualenv would not exist.
    return wrapper + [job.executable, *job.args]


def sbatch_argv(job, run_dir, options, dependencies=(), *, use_gpus=False):
    """The full ``sbatch`` command line of one job (``dependencies``: SLURM ids)."""
    run_dir = Path(run_dir).resolve()
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job.id}",
        f"--output={common.log_path(run_dir, job)}",
        "--open-mode=append",
        f"--chdir={common.data_dir(run_dir)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, int(job.cores))}",
        f"--mem={max(1, int(job.memory_mb))}M",
        f"--time={_format_time(job.runtime_s)}",
    ]
    gpu_job = use_gpus and job.gpus > 0
    partition = options.gpu_partition if gpu_job and options.gpu_partition else options.partition
    if partition:
        argv.append(f"--partition={partition}")
    if options.account:
        argv.append(f"--account={options.account}")
    if gpu_job:
        argv.append(f"--gres=gpu:{job.gpus}" if options.gpu_flag == "gres" else f"--gpus={job.gpus}")
    if job.checkpoint:
        # Warn the wrapper before the time limit: it passes SIGTERM on and the job saves its
        # checkpoint, from which 'resume' continues.
        argv.append(f"--signal=B:TERM@{min(CHECKPOINT_GRACE_S, max(1, int(job.runtime_s) // 4))}")
    if dependencies:
        argv += [f"--dependency=afterok:{':'.join(str(d) for d in dependencies)}", "--kill-on-invalid-dep=yes"]
    argv += list(options.sbatch_options)
    tries = 1 + max(0, common.effective_retries(job, options.retries))
    # The wrapper is the batch script; sbatch runs it with its own arguments.
    wrapped = jobwrap.command(run_dir, job.id, 1, tries, job_command(job, run_dir, options, use_gpus=use_gpus))
    return argv + wrapped[1:]


def _levels(jobs, selected):
    """``selected`` job ids grouped into waves: a job comes after every selected parent."""
    depth = {}
    by_id = {job.id: job for job in jobs}
    for job in jobs:
        if job.id in selected:
            depth[job.id] = 1 + max((depth[p] for p in job.parents if p in depth), default=-1)
    waves = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for job_id, level in depth.items():
        waves[level].append(by_id[job_id])
    return waves


def _decide_gpus(jobs, options):
    if options.request_gpus == "yes":
        return True
    if options.request_gpus == "no" or not any(job.gpus for job in jobs):
        return False
    found = cluster_has_gpus(options.gpu_partition or options.partition)
    if not found:
        logger.info(
            "no gpu GRES on the cluster: GPU jobs are submitted without GPU requests (--request-gpus yes to force)"
        )
    return found


def submit(run_dir, jobs, options, *, selected=None, live=None):
    """Submit ``selected`` jobs (all by default) in dependency order; return ``{job_id: slurm_id}``.

    ``live`` maps ids of jobs that are not submitted now but still queued or running to
    their SLURM ids: selected jobs depend on them too. Parents that are neither selected
    nor live are taken as finished. Each SLURM id is appended to ``submissions.tsv`` as
    soon as ``sbatch`` returns it, so an interrupted submission loses nothing.
    """
    run_dir = Path(run_dir).resolve()
    options.validate()
    selected = {job.id for job in jobs} if selected is None else set(selected)
    live = dict(live or {})
    state = slurm_state_dir(run_dir)
    state.mkdir(parents=True, exist_ok=True)
    (run_dir / common.LOGS_DIR).mkdir(parents=True, exist_ok=True)
    jobwrap.install(run_dir)
    save_options(run_dir, options)
    use_gpus = _decide_gpus([job for job in jobs if job.id in selected], options)

    for job_id in selected:
        jobwrap.record_path(run_dir, job_id).unlink(missing_ok=True)
    ids = {}
    log = state / "submissions.tsv"
    start = time.perf_counter()

    def submit_one(job):
        dependencies = [ids.get(p) or live.get(p) for p in job.parents]
        dependencies = [d for d in dependencies if d]
        argv = sbatch_argv(job, run_dir, options, dependencies, use_gpus=use_gpus)
        for attempt in range(SBATCH_ATTEMPTS):
            result = _slurm(argv, check=False)
            message = (result.stderr or result.stdout).strip()
            if result.returncode == 0 or not any(t in message.lower() for t in _TRANSIENT):
                break
            # A busy controller answers "try again"/"timed out": back off and retry.
            time.sleep(0.5 * 2**attempt)
        if result.returncode != 0:
            return job, None, " / ".join(line.strip() for line in message.splitlines() if line.strip())
        return job, result.stdout.strip().split(";")[0], None

    errors = []
    with ThreadPoolExecutor(max_workers=options.submit_workers) as pool:
        for wave in _levels(jobs, selected):
            lines = []
            for job, slurm_id, error in pool.map(submit_one, wave):
                if slurm_id:
                    ids[job.id] = slurm_id
                    lines.append(f"{job.id}\t{slurm_id}\t{time.strftime('%Y-%m-%dT%H:%M:%S')}")
                else:
                    errors.append(f"{job.id}: {error}")
            _append_lines(log, lines)
            if errors:
                break
    elapsed = time.perf_counter() - start
    if errors:
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        hint = ""
        if "node configuration is not available" in shown or "can not be satisfied" in shown:
            hint = (
                " (a job asks for more cores, memory or GPUs than a node of the partition has: choose another "
                "--partition or lower the request, e.g. --sbatch-option=--mem=8G)"
            )
        raise StageError(
            f"sbatch refused {len(errors)} job(s) ({len(ids)} submitted): {shown}{hint}; fix the "
            f"options and run 'resume {run_dir}' to submit the rest"
        )
    logger.info("submitted %d job(s) to SLURM in %.1f s", len(ids), elapsed)
    return ids


# -- status -----------------------------------------------------------------------------


@dataclass
class JobStatus:
    """What the engine knows about one job."""

    id: str
    state: str
    slurm_id: str | None = None
    exit_code: int | None = None
    reason: str = ""


def _from_slurm_state(slurm_state, reason=""):
    """``(state, reason)`` of a SLURM job state (squeue ``%T`` / sacct ``State``), or None when unknown."""
    if slurm_state == "PENDING":
        return (BLOCKED, _NEVER_SATISFIED) if reason == _NEVER_SATISFIED else (PENDING, reason)
    if slurm_state in _SLURM_RUNNING:
        return RUNNING, slurm_state.lower()
    if slurm_state == "COMPLETED":
        return DONE, ""
    if slurm_state == "CANCELLED":
        return (BLOCKED, _NEVER_SATISFIED) if reason == _NEVER_SATISFIED else (CANCELLED, reason)
    if slurm_state in _SLURM_FAILED:
        return FAILED, slurm_state.lower()
    return None


@dataclass
class _Sources:
    """Everything ``status`` knows about the SLURM jobs of a run, read once per call."""

    #: ``{job_id: slurm_id}`` of the current submission of every submitted job.
    current: dict
    #: ``{job_id: exit record}`` of jobs whose record belongs to their current submission.
    records: dict
    #: ``{slurm_id: (STATE, reason)}`` from one ``squeue`` call.
    queue: dict
    #: ``{slurm_id: (STATE, reason)}`` end states seen in earlier calls (``observed.tsv``).
    observed: dict
    #: ``{slurm_id: (STATE, exit_code)}`` from ``sacct``; empty without accounting.
    accounting: dict
    #: SLURM ids cancelled by ``cancel``.
    cancelled: set


def _current_records(run_dir, jobs, current):
    """Exit records that belong to each job's current SLURM submission (older ones are stale)."""
    records = {}
    for job in jobs:
        if job.id not in current:
            continue
        record = jobwrap.read_record(run_dir, job.id)
        if record and str(record.get("slurm_job_id")) == current[job.id]:
            records[job.id] = record
    return records


def _read_sources(run_dir, jobs, use_sacct):
    """Exit records first; ``squeue`` for the rest; ``sacct`` only for what neither nor the logs know."""
    state_dir = slurm_state_dir(run_dir)
    current = submissions(run_dir)
    records = _current_records(run_dir, jobs, current)
    waiting = [current[j.id] for j in jobs if j.id in current and j.id not in records]
    queue = squeue_states(waiting)
    observed = {row[0]: (row[1], row[2] if len(row) > 2 else "") for row in _read_tsv(state_dir / "observed.tsv")}
    unresolved = [i for i in waiting if i not in queue and i not in observed]
    accounting = (sacct_states(unresolved) or {}) if use_sacct and unresolved else {}
    cancelled = {row[0] for row in _read_tsv(state_dir / "cancelled.tsv")}
    return _Sources(current, records, queue, observed, accounting, cancelled)


def _state_from_record(record):
    """``(state, reason), exit_code`` from a job's exit record."""
    code = int(record["exit_code"])
    if code == 0:
        return (DONE, ""), code
    if record.get("signal"):
        return (FAILED, f"stopped by SIG{record['signal']} (exit {code})"), code
    return (FAILED, f"exit code {code} after {record.get('attempt', '?')} attempt(s)"), code


def _state_from_scheduler(slurm_id, sources):
    """``(state, reason) or None, exit_code`` from squeue, the states seen before, or sacct."""
    if slurm_id in sources.queue:
        return _from_slurm_state(*sources.queue[slurm_id]), None
    if slurm_id in sources.observed:
        return _from_slurm_state(*sources.observed[slurm_id]), None
    if slurm_id in sources.accounting:
        slurm_state, code = sources.accounting[slurm_id]
        return _from_slurm_state(slurm_state), code
    return None, None


def _from_parents(job, statuses):
    """A job SLURM and the records know nothing of: blocked by a parent that did not succeed, else lost."""
    bad = [p for p in job.parents if statuses.get(p) and statuses[p].state in (FAILED, CANCELLED, BLOCKED, LOST)]
    if bad:
        return BLOCKED, f"parent {bad[0]} did not succeed"
    return LOST, "SLURM no longer knows the job and it recorded no exit code"


def _job_status(job, sources, statuses):
    """The :class:`JobStatus` of one job; ``statuses`` holds those of its parents (topological order)."""
    slurm_id = sources.current.get(job.id)
    status = JobStatus(job.id, UNSUBMITTED, slurm_id)
    if slurm_id is None:
        return status
    record = sources.records.get(job.id)
    if record is not None:
        mapped, status.exit_code = _state_from_record(record)
    else:
        mapped, status.exit_code = _state_from_scheduler(slurm_id, sources)
    if slurm_id in sources.cancelled and (mapped is None or mapped[0] not in (DONE, PENDING, RUNNING)):
        # pending/running: SLURM has not processed the scancel yet
        mapped = (CANCELLED, "cancelled by 'cancel'")
    status.state, status.reason = mapped or _from_parents(job, statuses)
    return status


def _newly_observed(sources):
    """``observed.tsv`` lines for end states squeue shows now and will forget after ``MinJobAge``."""
    lines = []
    for slurm_id, seen in sources.queue.items():
        mapped = _from_slurm_state(*seen)
        if mapped and mapped[0] not in LIVE_STATES and sources.observed.get(slurm_id) != seen:
            lines.append(f"{slurm_id}\t{seen[0]}\t{seen[1]}")
    return lines


def collect_status(run_dir, jobs, *, use_sacct=True):
    """``{job_id: JobStatus}`` for every job, in the order of ``jobs`` (topological)."""
    run_dir = Path(run_dir)
    sources = _read_sources(run_dir, jobs, use_sacct)
    statuses = {}
    for job in jobs:
        statuses[job.id] = _job_status(job, sources, statuses)
    _append_lines(slurm_state_dir(run_dir) / "observed.tsv", _newly_observed(sources))
    return statuses


def summarize(statuses):
    """One line: counts per state and the percentage done."""
    if not statuses:
        return "no jobs"
    percent = 100.0 * sum(s.state == DONE for s in statuses.values()) / len(statuses)
    return common.count_states(s.state for s in statuses.values()) + f" ({percent:.1f}% done)"


def print_status(statuses, *, show_all=False, file=None):
    file = file or sys.stdout
    rows = [s for s in statuses.values() if show_all or s.state != DONE]
    if rows:
        width = max(len(s.id) for s in rows)
        print(f"{'job':<{width}}  {'state':<11}  {'slurm id':>9}  {'exit':>4}  reason", file=file)
        for s in rows:
            exit_code = "" if s.exit_code is None else str(s.exit_code)
            print(f"{s.id:<{width}}  {s.state:<11}  {s.slurm_id or '':>9}  {exit_code:>4}  {s.reason}", file=file)
    print(f"slurm: {len(statuses)} jobs: {summarize(statuses)}", file=file)


def wait(run_dir, jobs, *, poll_interval=10.0, timeout=None):
    """Poll (one ``squeue`` per interval) until no job is pending or running; return the statuses."""
    start = time.monotonic()
    last = None
    failures = 0
    while True:
        try:
            statuses = collect_status(run_dir, jobs, use_sacct=False)
            failures = 0
        except StageError as exc:
            # A controller restart or an overloaded squeue should not end the wait at once.
            failures += 1
            if failures >= 5:
                raise
            logger.warning("%s; trying again in %.0f s", exc, poll_interval)
            time.sleep(poll_interval)
            continue
        line = summarize(statuses)
        if line != last:
            logger.info("slurm: %s", line)
            last = line
        if not any(s.state in LIVE_STATES for s in statuses.values()):
            return collect_status(run_dir, jobs)
        if timeout is not None and time.monotonic() - start > timeout:
            logger.warning("stopped waiting after %.0f s; the jobs go on (see 'status')", timeout)
            return statuses
        time.sleep(poll_interval)


def _finish(run_dir, jobs, args):
    """Wait when asked to; the exit code of run/resume."""
    if not getattr(args, "slurm_wait", False):
        print(f"slurm: jobs submitted; follow them with 'status {run_dir}'")
        return 0
    interval = getattr(args, "slurm_poll_interval", None) or 10.0
    statuses = wait(run_dir, jobs, poll_interval=interval, timeout=getattr(args, "slurm_wait_timeout", None))
    print_status(statuses)
    return 0 if all(s.state == DONE for s in statuses.values()) else 1


# -- engine interface -------------------------------------------------------------------


def _options(args, base=None):
    """Submission options from the flags given now over ``base``; ``--retries`` of this submission only."""
    args = args if args is not None else argparse.Namespace()
    options = SlurmOptions.from_args(args, base)
    options.retries = getattr(args, "retries_override", None)
    return options


def run(run_dir, jobs, args):
    """Submit every job of a fresh run directory to SLURM (and wait with ``--wait``)."""
    run_dir = Path(run_dir).resolve()
    previous = submissions(run_dir)
    if previous:
        live = [
            k
            for k, (state, _) in squeue_states(previous.values()).items()
            if _from_slurm_state(state) and _from_slurm_state(state)[0] in LIVE_STATES
        ]
        if live:
            raise ConfigError(
                f"{run_dir} still has {len(live)} job(s) queued or running on SLURM; "
                f"'cancel {run_dir}' first, or follow them with 'status {run_dir}'"
            )
        # A rebuilt run (run_workflow.py --force) starts afresh; the old bookkeeping is kept aside.
        old = slurm_state_dir(run_dir)
        old.rename(old.with_name(f"{STATE_SUBDIR}.{time.strftime('%Y%m%d-%H%M%S')}"))
    options = _options(args)
    common.prepare_data_dir(run_dir, jobs)
    ids = submit(run_dir, jobs, options)
    print(f"slurm: submitted {len(ids)} jobs (first SLURM id {min(ids.values(), key=int, default='-')})")
    return _finish(run_dir, jobs, args)


def status(run_dir, jobs, args):
    """Print the state of every job that has not finished (all with ``-v``); exit 1 if one failed."""
    run_dir = Path(run_dir).resolve()
    statuses = collect_status(run_dir, jobs)
    print_status(statuses, show_all=getattr(args, "verbose", 0) > 0)
    code = common.status_exit_code(s.state for s in statuses.values())
    if getattr(args, "verify", False):
        # No checksums are recorded on SLURM: every output of a finished job is re-read
        # and must open (zip members pass their CRC check, JSON parses, files not empty).
        problems = [
            (job.id, lfn, reason)
            for job in jobs
            if statuses[job.id].state == DONE
            for lfn, reason in common.output_problems(job, run_dir, None, full=True)
        ]
        for job_id, lfn, reason in problems:
            print(f"MISMATCH {job_id}: {common.data_dir(run_dir) / lfn}: {reason}")
        print(
            f"verify: {len(problems)} output(s) of finished jobs damaged or missing"
            if problems
            else "verify: every output of the finished jobs opens and passes its CRC checks"
        )
        code = max(code, 1 if problems else 0)
    return code


def resume(run_dir, jobs, args):
    """Submit again the failed, cancelled, never-run and lost jobs (and finished ones whose outputs are gone)."""
    run_dir = Path(run_dir).resolve()
    options = _options(args, load_options(run_dir))
    statuses = collect_status(run_dir, jobs)
    selected = set()
    for job in jobs:  # topological order: parents are decided first
        state = statuses[job.id].state
        if state in RESUBMIT_STATES or (state == DONE and not common.outputs_intact(job, run_dir)):
            selected.add(job.id)
        elif state == PENDING and any(p in selected for p in job.parents):
            # It waits on the old submission of a job that runs again: replace it too.
            selected.add(job.id)
    # Selected jobs SLURM still holds (pending below a re-run job, or kept pending on a
    # dependency that can never be satisfied where invalid dependencies are not killed)
    # are cancelled before they are submitted again.
    queued = [statuses[j].slurm_id for j in selected if statuses[j].slurm_id]
    held = [k for k, (state, _) in squeue_states(queued).items() if state == "PENDING"] if queued else []
    if held:
        _slurm(["scancel", *held], check=False)
        _append_lines(slurm_state_dir(run_dir) / "cancelled.tsv", held)
    live = {s.id: s.slurm_id for s in statuses.values() if s.state in LIVE_STATES and s.id not in selected}
    if not selected:
        print(f"slurm: nothing to resume ({summarize(statuses)})")
        return _finish(run_dir, jobs, args) if live else 0
    common.prepare_data_dir(run_dir, jobs)
    ids = submit(run_dir, jobs, options, selected=selected, live=live)
    done = sum(1 for s in statuses.values() if s.state == DONE and s.id not in selected)
    print(f"slurm: submitted {len(ids)} job(s); {len(live)} still queued or running; {done} done, kept")
    return _finish(run_dir, jobs, args)


def cancel(run_dir, jobs, args):
    """``scancel`` every job of the run that is queued or running."""
    run_dir = Path(run_dir).resolve()
    statuses = collect_status(run_dir, jobs, use_sacct=False)
    live = [s.slurm_id for s in statuses.values() if s.state in LIVE_STATES]
    if not live:
        print(f"slurm: nothing queued or running ({summarize(statuses)})")
        return 0
    _append_lines(slurm_state_dir(run_dir) / "cancelled.tsv", list(live))
    _slurm(["scancel", *live])
    print(f"slurm: cancelled {len(live)} job(s); 'resume {run_dir}' submits them again")
    return 0
