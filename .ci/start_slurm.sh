#!/usr/bin/env bash
# Starts a one-node Slurm cluster on localhost (munged, slurmctld, slurmd; loopback only) for the
# Slurm tests, with all state under DIR (default /tmp/redi-slurm), and prints the line
#   export SLURM_CONF=DIR/slurm.conf
# that points sbatch/squeue/scontrol at it. Idempotent: a cluster already answering is reused.
# Needs root and Debian's slurm-wlm and munge:  apt-get install -y slurm-wlm munge
#   usage: .ci/start_slurm.sh [DIR]          stop: .ci/start_slurm.sh --stop [DIR]
set -euo pipefail

if [[ ${1:-} == --stop ]]; then
    dir=${2:-/tmp/redi-slurm}
    for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid; do
        if [[ -f $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    exit 0
fi
dir=${1:-/tmp/redi-slurm}
export SLURM_CONF=$dir/slurm.conf
for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done

# munged: Debian's package ships the key; the daemon runs as the munge user.
if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge
    chown munge:munge /run/munge
    [[ -f /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n >/dev/null || { echo "munged did not start" >&2; exit 1; }
fi

# (sinfo retries for a minute when no controller answers: ask only when its daemons run.)
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if running "$dir/slurmctld.pid" && running "$dir/slurmd.pid" && [[ -f $SLURM_CONF ]]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
fi

mkdir -p "$dir/state" "$dir/spool"
# Memory as slurmd detects it; 4 CPUs at least (config_overrides lets the node claim more than
# it has), so two 2-process test jobs can run at once on a 2-core machine.
memory=$(slurmd -C | head -n1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cpus=$(( $(nproc) > 4 ? $(nproc) : 4 ))
cat > "$SLURM_CONF" <<EOF
ClusterName=redi-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
AuthType=auth/munge
# A requeued job waits cred_expire seconds (default 120) before it may start again.
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when Slurm ends a job: room for a save on a loaded machine.
KillWait=120
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 300); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.1
done
echo "the Slurm node did not become idle within 30 s; logs: $dir/slurmctld.log $dir/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
