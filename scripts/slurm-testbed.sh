#!/usr/bin/env bash
# A multi-centre Slurm test bed on one machine, on loopback: N independent clusters (own ClusterName, ports, state
# and spool folders), one slurmctld + one slurmd + one slurmrestd (openapi/v0.0.38, rest_auth/local, unix socket)
# each, sharing one munged.
#   scripts/slurm-testbed.sh start N DIR [BASEPORT]   install what is missing (apt), start N clusters under DIR
#                                          (cluster i listens on BASEPORT+10i and +10i+1; default 17000)
#   scripts/slurm-testbed.sh stop DIR      stop every daemon started under DIR
# Cluster i (1..N) is "suanli-c<i>", node "c<i>n1" with 2 CPUs and 2000 MB, partition "main"; its REST socket is
# DIR/c<i>/rest/rest.sock and DIR/c<i>/jobs is a folder jobs can write output to.
set -euo pipefail

cmd=${1:-}
case "$cmd" in
  start)
    n=${2:?N clusters}; dir=$(realpath -m "${3:?DIR}"); base=${4:-17000}
    if ! command -v slurmctld >/dev/null || ! command -v slurmrestd >/dev/null || ! command -v munged >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq slurm-wlm slurmrestd munge >/dev/null
    fi
    mkdir -p "$dir"
    # munge: one daemon for every cluster (they trust the same key, as centres sharing a test key would).
    if [ ! -S /run/munge/munge.socket.2 ] || ! pgrep -x munged >/dev/null; then
      mkdir -p /run/munge && chown munge:munge /run/munge
      [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=128 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
      runuser -u munge -- /usr/sbin/munged
    fi
    host=$(hostname -s)
    for i in $(seq 1 "$n"); do
      c="$dir/c$i"; mkdir -p "$c"/{state,spool,log,rest,jobs}
      chmod 1777 "$c/jobs"   # job output: written by the job's user, read by the agent
      ctld=$((base + 10 * i)); slurmd_port=$((ctld + 1))
      cat > "$c/slurm.conf" <<CONF
ClusterName=suanli-c$i
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$c/state
SlurmdSpoolDir=$c/spool/%n
SlurmctldPidFile=$c/slurmctld.pid
SlurmdPidFile=$c/slurmd-%n.pid
SlurmctldLogFile=$c/log/slurmctld.log
SlurmdLogFile=$c/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SlurmdTimeout=30
MinJobAge=600
NodeName=c${i}n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$slurmd_port CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=main Nodes=c${i}n1 Default=YES MaxTime=INFINITE State=UP
CONF
      SLURM_CONF="$c/slurm.conf" /usr/sbin/slurmctld -i
      SLURM_CONF="$c/slurm.conf" /usr/sbin/slurmd -N "c${i}n1"
      # slurmrestd refuses to run as root: run it as the slurm user with a socket folder it owns.
      chown slurm:slurm "$c/rest"; chmod 755 "$c/rest"
      chmod 644 "$c/slurm.conf"
      (SLURM_CONF="$c/slurm.conf" runuser -u slurm -- /usr/sbin/slurmrestd -s openapi/v0.0.38 -a rest_auth/local "unix:$c/rest/rest.sock" \
        > "$c/log/slurmrestd.log" 2>&1 & echo $! > "$c/slurmrestd.pid")
    done
    # Wait until every cluster answers and its node is idle.
    for i in $(seq 1 "$n"); do
      c="$dir/c$i"
      for _ in $(seq 1 100); do
        if SLURM_CONF="$c/slurm.conf" sinfo -h -o %T 2>/dev/null | grep -q idle && [ -S "$c/rest/rest.sock" ]; then break; fi
        sleep 0.2
      done
      SLURM_CONF="$c/slurm.conf" sinfo -h -o "%P %T %D" | sed "s/^/c$i: /"
      [ -S "$c/rest/rest.sock" ] || { echo "cluster $i: slurmrestd did not start" >&2; cat "$c/log/slurmrestd.log" >&2; exit 1; }
    done
    ;;
  stop)
    dir=$(realpath -m "${2:?DIR}")
    for pidfile in "$dir"/c*/slurmrestd.pid "$dir"/c*/slurmd-*.pid "$dir"/c*/slurmctld.pid; do
      [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    # slurmstepd outlives slurmd by design (a step whose controller was killed waits for it to come back): stop the
    # test bed's steps, found by their working folder under DIR, and every process below them.
    kill_tree() { local c; for c in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$c"; done; kill -9 "$1" 2>/dev/null || true; }
    for p in $(pgrep -x slurmstepd 2>/dev/null); do
      case "$(readlink "/proc/$p/cwd" 2>/dev/null)" in "$dir"/*) kill_tree "$p" ;; esac
    done
    sleep 0.5
    ;;
  *)
    echo "usage: $0 start N DIR | stop DIR" >&2; exit 2 ;;
esac
