#!/usr/bin/env bash
# A single-node Slurm on this machine, for the tests of `symnoise grid` with `launcher: {kind: slurm}`.
#
#   tools/local_slurm.sh install      install Debian's slurm-wlm and munge (skipped when slurmctld is present)
#   tools/local_slurm.sh start DIR    write DIR/slurm.conf, start munged (if none answers), slurmctld and slurmd
#                                     with every state, spool, log and PID file under DIR; prints SLURM_CONF=...
#   tools/local_slurm.sh stop DIR     stop what `start DIR` started, by the PIDs in DIR (nothing else)
#
# Needs root (SlurmUser=root). The controller and node daemon listen on free ports picked at start, so two
# copies (two test sessions) can run on one machine. Stopping never touches a daemon this script did not start.
set -u
cmd=${1:-}
dir=${2:-}

free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    port = random.randrange(20000, 30000)
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
    print(port)
    break
PY
}

install_slurm() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { echo "local_slurm: installing Slurm needs root" >&2; return 1; }
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || {
    echo "local_slurm: apt-get install slurm-wlm munge failed" >&2
    return 1
  }
}

stop_slurm() {
  for name in slurmd slurmctld munged; do
    pidfile="$dir/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
  done
  return 0
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
  chmod 400 /etc/munge/munge.key
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0   # one already answers: use it, never stop it
  /usr/sbin/munged --force --pid-file "$dir/munged.pid" || return 1
  for _ in $(seq 30); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "local_slurm: munged does not answer" >&2
  return 1
}

start_slurm() {
  mkdir -p "$dir"/state "$dir"/spool "$dir"/log
  start_munge || return 1
  host=$(hostname)
  cat >"$dir/slurm.conf" <<CONF
ClusterName=symnoise-test
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
MinJobAge=600
KillWait=5
NodeName=$host CPUs=$(nproc) RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  /usr/sbin/slurmctld -f "$SLURM_CONF" || return 1
  /usr/sbin/slurmd -f "$SLURM_CONF" || return 1
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
      echo "SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "local_slurm: the node did not come up (see $dir/log)" >&2
  return 1
}

case "$cmd" in
  install) install_slurm ;;
  start) [ -n "$dir" ] || { echo "usage: $0 start DIR" >&2; exit 2; }; install_slurm && start_slurm || { stop_slurm; exit 1; } ;;
  stop) [ -n "$dir" ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop_slurm ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
