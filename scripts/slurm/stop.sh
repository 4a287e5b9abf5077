#!/usr/bin/env bash
# Stop what scripts/slurm/ci-setup.sh started, and nothing else.
#
# Reads $INCLINET_SLURM_DIR/started (default ${TMPDIR:-/tmp}/inclinet-slurm/started): slurmd,
# slurmctld and munged are stopped through the pid files the setup recorded, and the
# /etc/slurm/slurm.conf it wrote is removed. Daemons that were already running before the
# setup (e.g. a system munged) are left alone. Safe to call twice.
set -uo pipefail

dir="${INCLINET_SLURM_DIR:-${TMPDIR:-/tmp}/inclinet-slurm}"
marker="# written by inclinet scripts/slurm/ci-setup.sh"
system_conf=/etc/slurm/slurm.conf
started="$dir/started"

say() { echo "slurm-stop: $*"; }

if [ ! -f "$started" ]; then
    say "nothing recorded in $started; nothing to stop"
    exit 0
fi

stop_pidfile() {
    local name="$1" pidfile="$2" pid
    if [ ! -f "$pidfile" ]; then
        say "$name: no pid file $pidfile"
        return 0
    fi
    pid="$(cat "$pidfile")"
    if ! kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) is not running"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        say "$name (pid $pid) killed after 10 s"
    else
        say "stopped $name (pid $pid)"
    fi
}

status=0
if grep -qx slurmd "$started"; then
    stop_pidfile slurmd "$dir/slurmd.pid" || status=1
    sed -i '/^slurmd$/d' "$started"
fi
if grep -qx slurmctld "$started"; then
    stop_pidfile slurmctld "$dir/slurmctld.pid" || status=1
    sed -i '/^slurmctld$/d' "$started"
fi
if grep -qx munged "$started"; then
    stop_pidfile munged "$dir/munged.pid" || status=1
    sed -i '/^munged$/d' "$started"
fi
if grep -qx system_conf "$started"; then
    if grep -qxF "$marker" "$system_conf" 2>/dev/null; then
        rm -f "$system_conf"
        say "removed $system_conf"
    fi
    sed -i '/^system_conf$/d' "$started"
fi
exit "$status"
