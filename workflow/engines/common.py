"""What every engine shares: the run directory layout, job command lines, output checks, raw-input links."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from inclinet import naming
from inclinet.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]

RUN_FILE = naming.RUN_FILE
DATA_DIR = naming.DATA_DIR
LOGS_DIR = naming.LOGS_DIR
STATE_DIR = naming.STATE_DIR


# -- the policy every engine follows ------------------------------------------------------

#: Exit code of a usage, configuration or input error: the same command cannot succeed on a
#: retry, so no engine retries it (the job wrapper, :mod:`workflow.engines.jobwrap`, applies it).
USAGE_ERROR_EXIT = 2

#: The states of a job, the same on every engine; each engine maps its own onto them
#: (docs/workflow.md, "Job states").
UNSUBMITTED = "unsubmitted"
PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
BLOCKED = "blocked"
CANCELLED = "cancelled"
LOST = "lost"
JOB_STATES = (UNSUBMITTED, PENDING, RUNNING, DONE, FAILED, BLOCKED, CANCELLED, LOST)
#: States that need 'resume' (after fixing the cause): 'status' exits 1 when a job is in one.
PROBLEM_STATES = (FAILED, BLOCKED, CANCELLED, LOST)
#: States in which the engine still works on a job.
LIVE_STATES = (PENDING, RUNNING)


def may_retry(exit_code, failures, retries):
    """True when a job that failed for the ``failures``-th time with ``exit_code`` runs again."""
    return exit_code != USAGE_ERROR_EXIT and failures <= retries


def status_exit_code(states):
    """``status``'s exit code on every engine: 1 when a job is in a :data:`PROBLEM_STATES` state, else 0."""
    return 1 if any(state in PROBLEM_STATES for state in states) else 0


def count_states(states):
    """``"3 done, 1 failed, 1 blocked"``: how many jobs are in each state, in :data:`JOB_STATES` order."""
    counts = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{counts[s]} {s}" for s in JOB_STATES if s in counts) or "no jobs"


def effective_retries(job, override=None):
    """Retries of ``job`` on this run: its own (``--retries`` at build), or ``override`` (``resume --retries``)."""
    return int(job.retries) if override is None else int(override)


def data_dir(run_dir):
    """``RUN/data``: the working directory of every job."""
    return Path(run_dir) / DATA_DIR


def log_path(run_dir, job):
    """``RUN/logs/<job-id>.log``: stdout and stderr of a job (all attempts)."""
    return Path(run_dir) / naming.job_log(_job_id(job))


def state_dir(run_dir):
    return Path(run_dir) / STATE_DIR


def _job_id(job):
    return job if isinstance(job, str) else job.id


def resolve_executable(name):
    """Absolute command prefix for an ``inclinet-*`` executable.

    The console script beside ``sys.executable`` (the same virtualenv) first, then the
    repository's ``bin/`` script run with ``sys.executable``, then ``PATH``.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    script = REPO_ROOT / "bin" / name
    if script.is_file():
        return [sys.executable, str(script)]
    found = shutil.which(name)
    if found:
        return [found]
    raise InputError(
        f"executable {name} not found beside {sys.executable}, in {REPO_ROOT / 'bin'} or on PATH; "
        "install inclinet (scripts/bootstrap.sh)"
    )


def job_command(job):
    """The argv of a job with its executable resolved to an absolute path."""
    return resolve_executable(job.executable) + list(job.args)


def read_run_info(run_dir):
    """``RUN/run.json`` as a dict (flags, config and engine of the run)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; is {run_dir} a run directory made by run_workflow.py?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); rebuild the run with run_workflow.py") from None


def read_json(path):
    """The JSON in ``path``, or None when it is missing or unreadable (a state or exit record)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- outputs ----------------------------------------------------------------------------


def file_intact(path, *, deep=False):
    """True when ``path`` exists and, for npz/keras/json, opens as such.

    ``deep`` also reads every member of an npz/keras zip and checks its CRC (a flipped
    byte inside the data is caught; without it only the zip directory is read).
    """
    return file_problem(path, deep=deep) is None


def file_problem(path, *, deep=False):
    """Why ``path`` is not a usable output (one phrase), or None when it is (see :func:`file_intact`)."""
    path = Path(path)
    try:
        if not path.exists():
            return "missing"
        if not path.is_file():
            return "not a regular file"
        suffix = path.suffix
        if suffix in (".npz", ".keras"):
            # The zip central directory sits at the end: a truncated file fails here.
            with zipfile.ZipFile(path) as archive:
                if not archive.namelist() and suffix == ".keras":
                    return "empty zip"
                if deep:
                    damaged = archive.testzip()
                    if damaged is not None:
                        return f"member {damaged} fails its CRC check (damaged)"
            return None
        if suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
            return None
        if path.stat().st_size == 0 and suffix != ".csv":
            return "empty"
        return None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return f"unreadable ({exc})"


def outputs_intact(job, run_dir):
    """True when every declared output of ``job`` exists under ``RUN/data`` and opens."""
    base = data_dir(run_dir)
    return all(file_intact(base / lfn) for lfn in job.outputs)


def checksum(path):
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def record_outputs(job, run_dir):
    """``{lfn: {"size", "mtime_ns", "sha256"}}`` of the declared outputs of a finished job."""
    base = data_dir(run_dir)
    records = {}
    for lfn in job.outputs:
        path = base / lfn
        info = path.stat()
        records[lfn] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": checksum(path)}
    return records


def output_problems(job, run_dir, recorded, *, full=False):
    """Why the outputs of a finished job no longer match what was recorded when it ended.

    Returns ``[(lfn, reason)]``, empty when everything matches. A file whose size and
    modification time are unchanged is trusted unless ``full`` (``status --verify``), which
    re-reads every file and compares its checksum. Without a record (a run from before
    output records, or a state rebuilt) the files are checked to open, CRCs included.
    """
    base = data_dir(run_dir)
    problems = []
    for lfn in job.outputs:
        path = base / lfn
        record = (recorded or {}).get(lfn)
        if record is None:
            reason = file_problem(path, deep=True)
            if reason:
                problems.append((lfn, reason))
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            problems.append((lfn, "missing"))
            continue
        except OSError as exc:
            problems.append((lfn, f"unreadable ({exc})"))
            continue
        if info.st_size != record["size"]:
            problems.append((lfn, f"size {info.st_size} bytes, recorded {record['size']} when the job finished"))
            continue
        if not full and info.st_mtime_ns == record.get("mtime_ns"):
            continue
        try:
            digest = checksum(path)
        except OSError as exc:
            problems.append((lfn, f"unreadable ({exc})"))
            continue
        if digest != record["sha256"]:
            problems.append((lfn, "content changed since the job finished (SHA-256 differs)"))
    return problems


def describe_problems(problems):
    """``[(lfn, reason)]`` as one line."""
    return "; ".join(f"{lfn}: {reason}" for lfn, reason in problems)


# -- raw inputs -------------------------------------------------------------------------


def _pfn_path(pfn):
    if pfn.startswith("file://"):
        return Path(unquote(urlparse(pfn).path))
    if "://" in pfn:
        return None
    return Path(pfn)


def _regex_pfn(pattern, pfn, lfn):
    match = re.fullmatch(pattern, lfn)
    if not match:
        return None
    groups = [match.group(0), *match.groups()]
    return re.sub(r"\[(\d+)\]", lambda m: groups[int(m.group(1))] or "", pfn)


def load_replicas(path):
    """Replica entries of a Pegasus ``replicas.yml`` as ``(exact, regex)`` lists of (lfn, pfn, site)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return [], []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc}); fix the replica catalog") from None
    exact, regex = [], []
    for entry in data.get("replicas", []):
        for pfn in entry.get("pfns", []):
            item = (entry["lfn"], pfn["pfn"], pfn.get("site", "local"))
            (regex if entry.get("regex") else exact).append(item)
    return exact, regex


def resolve_replica(lfn, exact, regex, site="local"):
    """Local path of ``lfn`` from replica entries (exact entries first), or None."""
    for entry_lfn, pfn, entry_site in exact:
        if entry_lfn == lfn and entry_site == site:
            return _pfn_path(pfn)
    for pattern, pfn, entry_site in regex:
        if entry_site == site:
            resolved = _regex_pfn(pattern, pfn, lfn)
            if resolved is not None:
                return _pfn_path(resolved)
    return None


def prepare_data_dir(run_dir, jobs):
    """Create ``RUN/data`` and link every raw input there under its LFN.

    Raw inputs are the files jobs read that no job writes; their locations come from
    ``RUN/replicas.yml`` (site ``local``). Raises :class:`InputError` listing the inputs
    that the replica catalog does not locate or that do not exist.
    """
    from workflow.dag import raw_inputs

    base = data_dir(run_dir)
    base.mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / LOGS_DIR).mkdir(exist_ok=True)
    state_dir(run_dir).mkdir(exist_ok=True)
    exact, regex = load_replicas(Path(run_dir) / "replicas.yml")
    problems = []
    for lfn in raw_inputs(jobs):
        target = resolve_replica(lfn, exact, regex)
        if target is None:
            problems.append(f"{lfn} (no replica entry for site local)")
            continue
        if not target.exists():
            problems.append(f"{lfn} -> {target} (file not found)")
            continue
        link = base / lfn
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target.resolve():
                continue
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.resolve(), link)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"raw inputs not available: {shown}; add them to replicas.yml or fix --data-path/--catalog")
    return base
