#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on localhost for the tests marked `slurm`.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing (needs
# root), writes a minimal slurm.conf whose state and logs live under one directory
# ($INCLINET_SLURM_DIR, default ${TMPDIR:-/tmp}/inclinet-slurm), starts munged (unless one
# already answers), slurmctld and slurmd, and waits until the node is idle.
#
# Idempotent: a second call finds the running cluster and only re-checks it. Clients find
# the configuration through /etc/slurm/slurm.conf (written only when that file is absent or
# was written by this script) and through $INCLINET_SLURM_DIR/env (`export SLURM_CONF=...`).
# Everything started here is recorded in $INCLINET_SLURM_DIR/started so that
# scripts/slurm/stop.sh stops exactly that and nothing else.
#
# Exit status: 0 when the node is idle and accepts jobs, 1 otherwise (with the daemon logs).
set -euo pipefail

dir="${INCLINET_SLURM_DIR:-${TMPDIR:-/tmp}/inclinet-slurm}"
conf="$dir/slurm.conf"
system_conf=/etc/slurm/slurm.conf
marker="# written by inclinet scripts/slurm/ci-setup.sh"
cluster=inclinet
node="$(hostname -s)"
timeout_s="${INCLINET_SLURM_TIMEOUT:-60}"
# Fake GPUs (gpu GRES backed by /dev/null) so that GPU requests (--gres=gpu:N) are
# scheduled and tested on a machine without GPUs; 0 for a cluster without GPUs.
fake_gpus="${INCLINET_SLURM_FAKE_GPUS:-1}"
case "$fake_gpus" in 0 | 1) ;; *) echo "slurm-setup: error: INCLINET_SLURM_FAKE_GPUS must be 0 or 1" >&2; exit 1 ;; esac

say() { echo "slurm-setup: $*"; }
die() {
    echo "slurm-setup: error: $*" >&2
    for log in "$dir"/log/*.log; do
        [ -f "$log" ] || continue
        echo "---- last lines of $log ----" >&2
        tail -n 20 "$log" >&2
    done
    exit 1
}

# -- 1. packages ------------------------------------------------------------------------
missing=()
for cmd in slurmctld slurmd sbatch munged; do
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
export PATH="$PATH:/usr/sbin:/sbin"
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install slurmctld slurmd slurm-client munge (needs root)"
    say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting daemons with their default
    # configuration: this script starts them itself.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    fi
    apt-get update -q >/dev/null || die "apt-get update failed"
    installed=0
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null || installed=$?
    [ "$own_policy" = 1 ] && rm -f "$policy"
    [ "$installed" = 0 ] || die "apt-get install slurmctld slurmd slurm-client munge failed"
else
    say "packages present: $(slurmd -V)"
fi

mkdir -p "$dir"/{state,spool,log}
touch "$dir/started"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
record_started() { grep -qx "$1" "$dir/started" || echo "$1" >>"$dir/started"; }

# -- 2. configuration -------------------------------------------------------------------
# CPUs and memory exactly as slurmd detects them, so the node is not drained for claiming
# more than it has and jobs asking for the whole machine can still be scheduled.
hw="$(slurmd -C | head -n 1)"
cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
boards="$(sed -n 's/.* Boards=\([0-9]*\).*/\1/p' <<<"$hw")"
sockets="$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")"
cores="$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")"
threads="$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")"
memory="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
[ -n "$cpus" ] && [ -n "$memory" ] || die "could not read the node's hardware from 'slurmd -C': $hw"

gres_line=""
node_gres=""
if [ "$fake_gpus" -gt 0 ]; then
    gres_line="GresTypes=gpu"
    node_gres="Gres=gpu:$fake_gpus "
fi
new_conf="$(cat <<EOF
$marker
# A single-node test cluster; every path lives under $dir.
ClusterName=$cluster
$gres_line
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers and CI runners: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# React within a second or two: the tests submit, wait and check small DAGs.
SchedulerParameters=sched_interval=2,bf_interval=1,default_queue_depth=1000
MinJobAge=300
# Time between scancel's SIGTERM and SIGKILL (SLURM's default): a job saves its checkpoint or its
# search state on SIGTERM and writes its exit record, which took over 5 s on a loaded 2-core machine.
KillWait=30
InactiveLimit=0
Waittime=0
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
MaxJobCount=20000
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$memory ${node_gres}State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)"
# slurmd reads gres.conf beside the slurm.conf it is started with; clients do not need it.
new_gres=""
[ "$fake_gpus" -gt 0 ] && new_gres="NodeName=$node Name=gpu File=/dev/null"
if [ -f "$conf" ] && [ "$(cat "$conf")" = "$new_conf" ] && [ "$(cat "$dir/gres.conf" 2>/dev/null)" = "$new_gres" ]; then
    say "configuration unchanged: $conf"
else
    # A changed node definition needs fresh daemons (scontrol reconfigure keeps the old GRES).
    for daemon in slurmd slurmctld; do
        if pid_alive "$dir/$daemon.pid" && grep -qx "$daemon" "$dir/started"; then
            kill "$(cat "$dir/$daemon.pid")"
            for _ in $(seq 1 100); do pid_alive "$dir/$daemon.pid" || break; sleep 0.1; done
            say "stopped $daemon to apply the new configuration"
        fi
    done
    printf '%s\n' "$new_gres" >"$dir/gres.conf"
    printf '%s\n' "$new_conf" >"$conf.tmp" && mv -f "$conf.tmp" "$conf"
    say "wrote $conf (node $node: $cpus CPUs, ${memory} MB, $fake_gpus fake GPU(s))"
fi
printf 'export SLURM_CONF=%q\n' "$conf" >"$dir/env"

if [ ! -e "$system_conf" ] || grep -qxF "$marker" "$system_conf" 2>/dev/null; then
    mkdir -p "$(dirname "$system_conf")"
    cp -f "$conf" "$system_conf.tmp" && mv -f "$system_conf.tmp" "$system_conf"
    record_started system_conf
    say "clients read $system_conf"
else
    say "warning: $system_conf belongs to another cluster; clients need: source $dir/env"
fi
export SLURM_CONF="$conf"

# -- 3. munge ---------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already answers; using it"
else
    key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile="$key" --force; else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
        say "created munge key $key"
    fi
    chown munge:munge "$key" /etc/munge 2>/dev/null || true
    chmod 0400 "$key"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        runuser -u munge -- munged --pid-file=/run/munge/munged.pid || die "munged did not start"
    else
        munged --pid-file=/run/munge/munged.pid || die "munged did not start"
    fi
    cp /run/munge/munged.pid "$dir/munged.pid"
    record_started munged
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged started but credentials do not verify"
    say "started munged (pid $(cat "$dir/munged.pid"))"
fi

# -- 4. daemons -------------------------------------------------------------------------
if pid_alive "$dir/slurmctld.pid"; then
    say "slurmctld already running (pid $(cat "$dir/slurmctld.pid"))"
else
    slurmctld -f "$conf" || die "slurmctld did not start"
    record_started slurmctld
    for _ in $(seq 1 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
    say "started slurmctld (pid $(cat "$dir/slurmctld.pid" 2>/dev/null || echo '?'))"
fi
scontrol ping | grep -q UP || die "slurmctld does not answer 'scontrol ping'"

if pid_alive "$dir/slurmd.pid"; then
    say "slurmd already running (pid $(cat "$dir/slurmd.pid"))"
else
    slurmd -f "$conf" -N "$node" || die "slurmd did not start"
    record_started slurmd
    for _ in $(seq 1 30); do [ -s "$dir/slurmd.pid" ] && break; sleep 0.1; done
    say "started slurmd (pid $(cat "$dir/slurmd.pid" 2>/dev/null || echo '?'))"
fi

# -- 5. wait for the node ---------------------------------------------------------------
deadline=$((SECONDS + timeout_s))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
    state="$(sinfo -h -n "$node" -o '%T' 2>/dev/null | head -n 1)"
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        down* | drain* | fail*)
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle | mixed | allocated | completing) ;;
    *) die "node $node is '${state:-unknown}' after ${timeout_s}s ($(scontrol show node "$node" 2>&1 | grep -o 'Reason=.*' || true))" ;;
esac
say "cluster '$cluster' up: node $node is $state ($cpus CPUs, $memory MB, $fake_gpus fake GPU); SLURM_CONF=$conf"
