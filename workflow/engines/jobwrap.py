"""The job wrapper of every engine that runs jobs itself (local, slurm), and its exit record.

The wrapper is a bash script (:data:`SCRIPT`) written to ``RUN/state/jobwrap.sh`` by
:func:`install`. It runs one job's command, retries it (never after exit code 2, see
:data:`~workflow.engines.common.USAGE_ERROR_EXIT`), passes SIGTERM/SIGINT on to it, and
writes the **exit record** ``RUN/state/exit/<job-id>.json`` when the job ends, whether or
not the process that started it is still there::

    {"format": 1, "job": "prep_g_0001", "attempt": 1, "exit_code": 0, "signal": "",
     "host": "node12", "started": 1764700000.123456, "ended": 1764700003.5, "slurm_job_id": ""}

``attempt`` is the number of the last attempt; ``exit_code`` that attempt's exit code
(128+N when it was killed by signal N); ``signal`` the signal the wrapper received
("TERM", "INT") or ""; ``started``/``ended`` seconds since the epoch; ``slurm_job_id``
SLURM's id of the job, "" elsewhere.

The record is written with one ``printf`` (one small write) and read back only through
:func:`read_record`, which takes a file that does not parse as a complete record for no
record: a record cut short (a node crash in the middle of the write) counts as none, never
as a wrong one, just as a record the wrapper had no time to write. The engines delete a
job's record before they start it. So no temporary file and ``mv`` are needed: the wrapper
runs no program besides the job (bash builtins only), and a job pays a few milliseconds for
it, not the start of another interpreter (BENCHMARKS.md, "Local-engine overhead per job").
"""

from __future__ import annotations

from pathlib import Path

from inclinet import naming
from inclinet.io import atomic_write_text
from workflow.engines.common import USAGE_ERROR_EXIT, read_json

#: Version of the exit-record format (its ``format`` field).
RECORD_FORMAT = 1
SCRIPT_NAME = "jobwrap.sh"
EXIT_DIR = "exit"

SCRIPT = r"""#!/bin/bash
# inclinet job wrapper, the same for every engine that runs jobs itself (local, slurm):
# run one job, retry it, pass SIGTERM/SIGINT on to it, and record how it ended.
#
# usage: jobwrap.sh EXIT_RECORD JOB_ID FIRST_ATTEMPT TRIES COMMAND [ARGS...]
#
# Runs COMMAND up to TRIES times (attempts numbered from FIRST_ATTEMPT), never again after
# exit code 0 or @USAGE_ERROR_EXIT@ (a usage or input error: the same command cannot
# succeed on a retry). Each attempt starts with one "=== JOB attempt N at TIME on HOST:
# COMMAND" line on stdout. When the job ends, also when it is stopped by a signal, the
# exit record is written to EXIT_RECORD in one write (one JSON object; readers take a
# record that does not parse for none; fields in docs/workflow.md, "The job wrapper and its
# exit record"). A job killed by signal N has exit code 128+N, as in the shell. Bash
# builtins only, apart from the job: the wrapper costs a few milliseconds per job.
record_file="$1"
job="$2"
first="$3"
attempt=$(($3 - 1))
last=$(($3 + $4 - 1))
shift 4

now() {
    # Sets $now without a fork (a command substitution would cost one): EPOCHREALTIME
    # (bash >= 5), whose decimal separator follows the locale; date on older bash.
    now="${EPOCHREALTIME:-}"
    [ -n "$now" ] || now="$(date +%s)"
    now="${now/,/.}"
}

now
started="$now"
rc=0
signal=""
child=""
previous=""
record() {
    now
    local format='{"format": @RECORD_FORMAT@, "job": "%s", "attempt": %d, "exit_code": %d, "signal": "%s", '
    format+='"host": "%s", "started": %s, "ended": %s, "slurm_job_id": "%s"}\n'
    printf "$format" "$job" "$attempt" "$rc" "$signal" "${HOSTNAME:-}" "$started" "$now" "${SLURM_JOB_ID:-}" \
        >"$record_file"
}
on_signal() {
    signal="$1"
    # A signal between starting the job and "child=$!" finds $! already set to its pid.
    if [ -z "$child" ] && [ "${!:-}" != "$previous" ]; then
        child="$!"
    fi
    [ "$attempt" -ge "$first" ] || attempt="$first"
    echo "=== $job: received SIG$1; stopping the job"
    rc=$((128 + $2))
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
        wait "$child"
        rc=$?
    fi
    record
    exit "$rc"
}
# Set before the job starts, so that an early signal is never lost.
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
if [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "=== $job: SLURM_JOB_ID=$SLURM_JOB_ID in $PWD; GPUs: ${SLURM_JOB_GPUS:-none}"
fi
while [ "$attempt" -lt "$last" ]; do
    attempt=$((attempt + 1))
    printf '=== %s attempt %d at %(%Y-%m-%d %H:%M:%S)T on %s: %s\n' "$job" "$attempt" -1 "${HOSTNAME:-?}" "$*"
    # In the background and waited for, so that a signal is handled at once.
    "$@" &
    child=$!
    wait "$child"
    rc=$?
    previous="$child"
    child=""
    [ "$rc" -eq 0 ] && break
    echo "=== $job: attempt $attempt exited with code $rc"
    if [ "$rc" -eq @USAGE_ERROR_EXIT@ ]; then
        echo "=== $job: exit code @USAGE_ERROR_EXIT@ is a usage or input error; not retrying"
        break
    fi
done
record
echo "=== $job: ended with exit code $rc (attempt $attempt)"
exit "$rc"
""".replace("@USAGE_ERROR_EXIT@", str(USAGE_ERROR_EXIT)).replace("@RECORD_FORMAT@", str(RECORD_FORMAT))


def script_path(run_dir):
    """``RUN/state/jobwrap.sh``."""
    return Path(run_dir) / naming.STATE_DIR / SCRIPT_NAME


def install(run_dir):
    """Write the wrapper into the run directory (when it is not there already); return its path."""
    path = script_path(run_dir)
    try:
        current = path.read_text(encoding="utf-8")
    except OSError:
        current = None
    if current != SCRIPT:
        atomic_write_text(path, SCRIPT)
    path.chmod(0o755)
    record_path(run_dir, "x").parent.mkdir(parents=True, exist_ok=True)
    return path


def record_path(run_dir, job_id):
    """``RUN/state/exit/<job-id>.json``: where the wrapper records how the job ended."""
    return Path(run_dir) / naming.STATE_DIR / EXIT_DIR / f"{job_id}.json"


#: Fields every complete exit record has.
RECORD_FIELDS = ("format", "job", "attempt", "exit_code", "signal", "host", "started", "ended", "slurm_job_id")


def read_record(run_dir, job_id):
    """The exit record of a job as a dict, or None when there is none, or it is cut short or unreadable."""
    record = read_json(record_path(run_dir, job_id))
    if not isinstance(record, dict) or any(field not in record for field in RECORD_FIELDS):
        return None
    if record["job"] != job_id or not isinstance(record["exit_code"], int) or not isinstance(record["attempt"], int):
        return None
    return record


def command(run_dir, job_id, first_attempt, tries, argv):
    """The argv that runs ``argv`` under the wrapper: attempts ``first_attempt`` .. ``first_attempt + tries - 1``."""
    return [
        "bash",
        str(script_path(run_dir).resolve()),
        str(record_path(run_dir, job_id).resolve()),
        job_id,
        str(first_attempt),
        str(tries),
        *argv,
    ]
