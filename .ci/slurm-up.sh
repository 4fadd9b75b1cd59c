#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (slurmctld + slurmd on localhost, munge authentication), for the tests of
# `--launcher slurm` and for developers who want to try it: `sudo bash .ci/slurm-up.sh` (root), then `srun hostname`.
#   - installs Debian's slurm-wlm and munge with apt when they are missing;
#   - writes a fresh munge key and a minimal slurm.conf (this machine's CPUs and memory,
#     ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, SelectType=select/cons_tres, no accounting database);
#   - (re)starts munged, slurmctld and slurmd, and waits until `srun hostname` answers.
# Idempotent: running it again restarts the daemons with a freshly written configuration.
# Stop it with `bash .ci/slurm-up.sh --stop`.
set -euo pipefail
CONF_DIR=/etc/slurm
STATE=/var/spool/slurm-harness
LOGS=/var/log/slurm-harness
stop_daemons() {
    for pidfile in /run/slurmd-harness.pid /run/slurmctld-harness.pid; do
        # only a live slurmd/slurmctld (a stale pid file may name a pid another process has now)
        if [ -s "$pidfile" ] && grep -qs '^slurm' "/proc/$(cat "$pidfile")/comm"; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
        rm -f "$pidfile"
    done
}
if [ "${1:-}" = "--stop" ]; then stop_daemons; echo "slurm-up: stopped"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "slurm-up.sh: run as root (it installs packages and starts daemons)" >&2; exit 2; fi

missing=0
for tool in slurmctld slurmd munged srun; do command -v "$tool" >/dev/null 2>&1 || missing=1; done
if [ "$missing" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a fresh key at every start (the cluster is this machine only)
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ -s /run/munge/munged.pid ] && grep -qs '^munged' "/proc/$(cat /run/munge/munged.pid)/comm"; then
    kill "$(cat /run/munge/munged.pid)"; sleep 0.5
fi
dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "slurm-up.sh: munged does not answer" >&2; exit 1; }

stop_daemons
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
install -d "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
cat > "$CONF_DIR/slurm.conf" <<CONF
# written by .ci/slurm-up.sh: a one-node cluster on $NODE
ClusterName=harness
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld-harness.pid
SlurmdPidFile=/run/slurmd-harness.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MaxJobCount=100000
# finished jobs stay visible to squeue/scontrol for an hour (there is no accounting database for sacct)
MinJobAge=3600
KillWait=30
SchedulerParameters=defer_batch
DefMemPerCPU=$((MEM_MB / CPUS / 2))
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# slurmd initialises a cgroup plugin even with proctrack/linuxproc and task/none: the one this machine mounts
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then CGROUP=cgroup/v2; else CGROUP=cgroup/v1; fi
printf 'CgroupPlugin=%s\nIgnoreSystemd=yes\n' "$CGROUP" > "$CONF_DIR/cgroup.conf"
fail() {
    echo "slurm-up.sh: $1; logs in $LOGS:" >&2
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    exit 1
}
slurmctld -c -i || fail "slurmctld did not start"    # -c: no state from an earlier cluster
slurmd -c || fail "slurmd did not start"
for _ in $(seq 60); do
    if timeout 20 srun -N1 -n1 hostname >/dev/null 2>&1; then
        echo "slurm-up: one-node cluster '$NODE' up ($CPUS CPUs, $MEM_MB MB); srun hostname answers"
        exit 0
    fi
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
fail "srun hostname did not answer"
