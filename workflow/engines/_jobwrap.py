"""Run one job command, pass SIGTERM/SIGINT on to it, and record its exit code atomically.

Usage: ``python _jobwrap.py RCFILE ATTEMPT -- COMMAND...``. Started by the local engine in
a session of its own, so that it outlives a killed runner and still records how the job
ended in ``RCFILE`` (``{"returncode", "attempt", "ended"}``). Standard library only, and
run by path, so that each job pays for no imports beyond the interpreter's.
"""

import json
import os
import signal
import subprocess
import sys
import time


def _record(rc_file, code, attempt):
    tmp = f"{rc_file}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"returncode": code, "attempt": attempt, "ended": time.time()}, handle)
    os.replace(tmp, rc_file)


def main(argv):
    rc_file, attempt, command = argv[0], int(argv[1]), argv[3:]
    holder = {"child": None, "signal": None}

    def forward(signum, _frame):
        holder["signal"] = signum
        if holder["child"] is not None:
            try:
                holder["child"].send_signal(signal.SIGTERM)
            except OSError:
                pass

    # Installed before the child starts, so that an early SIGTERM is never lost.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        holder["child"] = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        _record(rc_file, 127, attempt)
        return 127
    if holder["signal"] is not None:
        holder["child"].send_signal(signal.SIGTERM)
    code = holder["child"].wait()
    _record(rc_file, code, attempt)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
