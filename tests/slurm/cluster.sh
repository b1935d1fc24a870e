#!/usr/bin/env bash
# A throw-away single-node SLURM cluster with two fake GPUs, for tests/e2e/test_slurm.py.
#
#   tests/slurm/cluster.sh start DIR   # write DIR/slurm.conf, start munged, slurmctld, slurmd
#   tests/slurm/cluster.sh stop DIR    # stop the daemons started above, by their PID files
#
# Everything lives in DIR (config, spool, state, logs, PID files, munge socket), so it
# leaves alone a munged the machine may already run. Clients find the cluster through
# SLURM_CONF=DIR/slurm.conf, except srun inside a job: the Snakemake jobstep drops every
# SLURM_* variable before calling it, so srun falls back to /run/slurm/conf/slurm.conf,
# which start links to DIR (and refuses to run on a machine with a SLURM config of its
# own). Needs root and the Debian packages slurmctld slurmd slurm-client munge
# (.ci/slurm.sh installs them).
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
export SLURM_CONF=$dir/slurm.conf
conf_link=/run/slurm/conf

wait_for() { # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "cluster.sh: $what not ready after ${seconds}s; logs in $dir/log" >&2
    return 1
}

stop_pidfile() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if kill "$pid" 2>/dev/null; then
        # slurmd and munged need a moment to flush state; SIGKILL only if they hang
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

start() {
    # a link left by a test run that was killed points at a folder that is gone
    if [[ -L $conf_link && ! -e $conf_link ]]; then
        rm "$conf_link"
    fi
    if [[ -e /etc/slurm/slurm.conf || -e $conf_link ]]; then
        echo "cluster.sh: this machine has a SLURM configuration already (/etc/slurm/slurm.conf or" \
            "$conf_link); not starting a test cluster beside it" >&2
        exit 1
    fi
    mkdir -p "$dir"/{munge,spool,state,log}
    chmod 755 "$dir"
    # munged refuses a socket folder others can write to, and runs as its own user
    chown munge:munge "$dir/munge"
    chmod 755 "$dir/munge"
    runuser -u munge -- munged --socket="$dir/munge/socket" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    wait_for 10 munged test -S "$dir/munge/socket"

    local host node
    host=$(hostname -s)
    # the node's real CPUs and memory, as slurmd itself reports them
    node=$(slurmd -C | head -n 1)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=selectflow-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# no cgroups, no systemd: track job processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no slurmdbd: sacct does not work, so the test has the plugin poll squeue
AccountingStorageType=accounting_storage/none
# no cgroups either: memory limits are enforced by polling each step's RSS
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# squeue must still list a finished job at the next status check, and the test reads
# every job of a run afterwards
MinJobAge=3600
DefMemPerCPU=1000
GresTypes=gpu
$node NodeAddr=127.0.0.1 Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
# a second partition, named like a Python builtin, for the profile's partition setting
PartitionName=all Nodes=ALL MaxTime=INFINITE State=UP
EOF
    # two GPUs of model "fake", for the two-rank FPS job: slurmd needs a device file per GPU,
    # and /dev/null and /dev/zero are always there
    cat >"$dir/gres.conf" <<EOF
AutoDetect=off
Name=gpu Type=fake File=/dev/null
Name=gpu Type=fake File=/dev/zero
EOF
    mkdir -p "$(dirname "$conf_link")"
    ln -s "$dir" "$conf_link"
    slurmctld -f "$dir/slurm.conf"
    slurmd -f "$dir/slurm.conf"
    wait_for 30 "node $host" sh -c "sinfo -h -n '$host' -o %T | grep -qx idle"
}

stop() {
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    if [[ $(readlink "$conf_link") == "$dir" ]]; then
        rm "$conf_link"
    fi
}

case $cmd in
start) start ;;
stop) stop ;;
*)
    echo "usage: cluster.sh start|stop DIR" >&2
    exit 2
    ;;
esac
