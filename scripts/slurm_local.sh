#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying the cluster path by hand:
#   scripts/slurm_local.sh install        apt-get install slurm-wlm slurmdbd munge mariadb-server (root; Debian)
#   scripts/slurm_local.sh start [DIR]    munged, MariaDB, slurmdbd, slurmctld, slurmd;
#                                         prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm_local.sh stop [DIR]     stops the daemons this script started, by their pid files
# State, logs, pid files and the accounting database live in DIR (default /tmp/dlzoo-slurm), never in /etc.
# Settings that work in a container as root: processes tracked by /proc (no cgroups), no task plugin; the
# controller and the node are addressed as 127.0.0.1, so the host name need not resolve.
# Accounting goes through slurmdbd into MariaDB, as on a real cluster: `sacct` (which submitit polls for a
# job's state) reads nothing without it.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin, which a plain user's (or CI's) PATH may lack
cmd=${1:-}
dir=$(realpath -m "${2:-/tmp/dlzoo-slurm}")

case "$cmd" in
install)
  missing=0
  for exe in munged slurmctld slurmd slurmdbd mariadbd; do command -v $exe >/dev/null || missing=1; done
  [ $missing = 0 ] && exit 0
  [ "$(id -u)" = 0 ] || { echo "error: installing SLURM needs root (apt-get)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm slurmdbd munge mariadb-server >/dev/null
  ;;
start)
  for exe in munged slurmctld slurmd slurmdbd mariadbd; do
    command -v $exe >/dev/null || { echo "error: $exe not found; run: scripts/slurm_local.sh install" >&2; exit 1; }
  done
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  host=$(hostname -s)
  cpus=$(nproc)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=dlzoo
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
JobRequeue=1
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  # munge runs as its own user; the package leaves its run directory to be created.
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge
    chown -R munge:munge /var/log/munge /var/lib/munge /etc/munge /run/munge
    su -s /bin/sh munge -c "munged --pid-file=/run/munge/munged.pid"
    chmod 755 /run/munge
    cp /run/munge/munged.pid "$dir/munged.pid"  # ours to stop (a munged already running is left alone)
  fi
  # slurmdbd reads slurmdbd.conf beside $SLURM_CONF; it must be private to SlurmUser.
  cat > "$dir/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
CONF
  chmod 600 "$dir/slurmdbd.conf"
  export SLURM_CONF="$dir/slurm.conf"
  # A private MariaDB on 127.0.0.1:3307 for the accounting database.
  if [ ! -d "$dir/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$dir/mysql" --user=root --auth-root-authentication-method=normal \
      >"$dir/log/mariadb-install.log" 2>&1
  fi
  mariadbd --no-defaults --datadir="$dir/mysql" --socket="$dir/mysql.sock" --port=3307 --bind-address=127.0.0.1 \
    --user=root --pid-file="$dir/mariadbd.pid" --log-error="$dir/log/mariadb.log" >/dev/null 2>&1 &
  for _ in $(seq 60); do [ -S "$dir/mysql.sock" ] && break; sleep 0.5; done
  mariadb --no-defaults -S "$dir/mysql.sock" -u root -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  slurmdbd
  for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  for _ in $(seq 60); do  # until the node takes jobs
    sinfo -h -o %t 2>/dev/null | grep -qx idle && { echo "export SLURM_CONF=$dir/slurm.conf"; exit 0; }
    sleep 0.5
  done
  echo "error: the SLURM node did not come up; see $dir/log/" >&2
  exit 1
  ;;
stop)
  # SIGTERM to every daemon this script started (pid files in DIR), then wait for each to exit.
  pids=()
  for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/slurmdbd.pid "$dir"/mariadbd.pid "$dir"/munged.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$pidfile"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { echo "error: pid $pid did not stop within 30 s" >&2; exit 1; }
  done
  ;;
*)
  echo "usage: $0 install|start|stop [DIR]" >&2
  exit 2
  ;;
esac
