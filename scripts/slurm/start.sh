#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests (tests/test_slurm.py) and
# for trying `wsi-seg run --cluster slurm` by hand: installs slurmctld, slurmd, the client
# commands and munge from apt when they are absent (Debian/Ubuntu, as root), writes a
# single-node slurm.conf (loopback only; no cgroups: proctrack/linuxproc, task/none), starts
# munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
#
# Nothing under /etc/slurm is written: the configuration and every daemon's state live in
# $WSI_SEG_SLURM_DIR (default /tmp/wsi-seg-slurm), and commands find it through SLURM_CONF.
# The last line printed is `SLURM_CONF=<path>`; `source <(scripts/slurm/start.sh | tail -1)`
# is not needed: tests read that line. Running it again while the cluster is up only prints it.
#
#   scripts/slurm/start.sh          start (or find running) and print SLURM_CONF=...
#   scripts/slurm/start.sh stop     stop the daemons this script started
set -euo pipefail

DIR="${WSI_SEG_SLURM_DIR:-/tmp/wsi-seg-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"
NODE="$(hostname -s)"
# How long the daemons may take to bring the node up (seconds): slurmd registers within a
# second or two; apt is not counted.
WAIT_S="${WSI_SEG_SLURM_WAIT_S:-60}"

say() { echo "slurm/start.sh: $*" >&2; }

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        pid="$(cat "$DIR/$name.pid" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" || true
        fi
    done
}

if [[ "${1:-}" == "stop" ]]; then
    stop
    exit 0
fi

node_idle() {
    sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

if [[ -f "$CONF" ]] && command -v sinfo >/dev/null && node_idle; then
    echo "SLURM_CONF=$CONF"
    exit 0
fi

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        say "slurm is not installed, and installing it needs root and apt-get"
        exit 3
    fi
    local t0=$SECONDS
    say "installing slurm-wlm and munge from apt"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
    say "installed in $((SECONDS - t0)) s"
}

write_conf() {
    local cpus mem_mb
    cpus="$(nproc)"
    # What the node offers for --mem: most of this machine's memory, in MB.
    mem_mb="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
    mkdir -p "$DIR/ctld" "$DIR/d" "$DIR/logs"
    cat > "$CONF" <<CONF
# Written by scripts/slurm/start.sh: one node, this machine, loopback only.
ClusterName=wsiseg
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/logs/slurmctld.log
SlurmdLogFile=$DIR/logs/slurmd.log
# No cgroups (containers and CI runners rarely delegate them).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Quick turnover: cancelled jobs end within seconds, a test run does not wait minutes.
KillWait=5
MinJobAge=30
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    if id munge >/dev/null 2>&1 && command -v runuser >/dev/null; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    pgrep -o -x munged > "$DIR/munged.pid" || true
}

install
write_conf
start_munge
# A slurmctld or slurmd left by an earlier start with another configuration goes first.
stop_daemon() {
    local pid
    pid="$(cat "$DIR/$1.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
}
stop_daemon slurmd
stop_daemon slurmctld
slurmctld -f "$CONF"
slurmd -f "$CONF" -N "$NODE"

deadline=$((SECONDS + WAIT_S))
until node_idle; do
    if ((SECONDS > deadline)); then
        say "the node did not come up in $WAIT_S s; logs in $DIR/logs:"
        tail -n 5 "$DIR/logs/slurmctld.log" "$DIR/logs/slurmd.log" >&2 || true
        sinfo -N >&2 || true
        exit 4
    fi
    # A node that registered DOWN (a restart of slurmctld) is put back in service.
    if sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | grep -Eq '^(down|drain)'; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
echo "SLURM_CONF=$CONF"
