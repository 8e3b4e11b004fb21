#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the `slurm` test tier (see docs/architecture.md
# and the project's notes/slurm-local.md).
#
#   slurm_cluster.sh install            apt-get Debian's slurmctld slurmd slurm-client slurmdbd munge
#                                       mariadb-server (skipped when already installed)
#   slurm_cluster.sh start STATE_DIR    munged, MariaDB, slurmdbd, slurmctld, slurmd, all under STATE_DIR,
#                                       on 127.0.0.1 with free ports; waits until the node is idle.
#                                       Writes STATE_DIR/slurm.conf (export SLURM_CONF=STATE_DIR/slurm.conf)
#                                       and STATE_DIR/pids (every PID it started).
#   slurm_cluster.sh stop STATE_DIR     cancels this cluster's jobs, then stops exactly the PIDs in
#                                       STATE_DIR/pids (never by process name).
#   slurm_cluster.sh status STATE_DIR   which of those PIDs live, and sinfo.
#
# Made for root on Debian 12 without systemd (CI containers); nothing is installed as a service.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
CLUSTER_NAME=vtbench
DB_USER=slurm
DB_NAME=slurm_acct_db

log() { echo "[slurm_cluster $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------- install
install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "already installed: ${PACKAGES[*]}"
    return 0
  fi
  log "installing: ${missing[*]}"
  # Keep package scripts from starting system services (MariaDB, munge) on install: this cluster
  # runs its own daemons under STATE_DIR. Only remove the policy file if we created it.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || rc=$?
  if [ $rc -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  fi
  if [ $created_policy = 1 ]; then rm -f "$policy"; fi
  [ $rc -eq 0 ] || die "apt-get failed (exit $rc)"
  log "installed"
}

# ------------------------------------------------------------------------------------------ start
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_daemon NAME CMD...: start CMD in the background, logging to STATE_DIR/log/NAME.out,
# and record "NAME PID" in STATE_DIR/pids.
start_daemon() {
  local name=$1; shift
  "$@" >>"$STATE_DIR/log/$name.out" 2>&1 &
  local pid=$!
  echo "$name $pid" >>"$STATE_DIR/pids"
  log "started $name (pid $pid)"
}

# wait_for SECONDS DESCRIPTION CMD...: retry CMD (quietly) until it succeeds or time runs out.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${seconds}s waiting for $what (logs in $STATE_DIR/log)"
    sleep 0.5
  done
}

start_munge() {
  local dir=$STATE_DIR/munge
  mkdir -p "$dir"
  chown munge:munge "$dir"
  chmod 755 "$dir"   # munged refuses a 700 socket dir ("execute permissions for all required")
  MUNGE_SOCKET=$dir/munge.socket.2
  setpriv --reuid=munge --regid=munge --init-groups -- mungekey --create --keyfile="$dir/munge.key"
  start_daemon munged setpriv --reuid=munge --regid=munge --init-groups -- \
    munged -F --socket="$MUNGE_SOCKET" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
  wait_for 20 munge bash -c "munge -n --socket='$MUNGE_SOCKET' | unmunge --socket='$MUNGE_SOCKET'"
}

start_mariadb() {
  local datadir=$STATE_DIR/mysql
  DB_SOCKET=$STATE_DIR/mysqld.sock
  DB_PORT=$(free_port)
  DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  mkdir -p "$datadir"
  mariadb-install-db --no-defaults --user=root --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=socket >"$STATE_DIR/log/mariadb-install.out" 2>&1 \
    || die "mariadb-install-db failed (see $STATE_DIR/log/mariadb-install.out)"
  start_daemon mariadbd mariadbd --no-defaults --user=root --datadir="$datadir" --socket="$DB_SOCKET" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$STATE_DIR/mysqld.pid" \
    --log-error="$STATE_DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M
  wait_for 60 MariaDB mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "SELECT 1"
  mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
    FLUSH PRIVILEGES;"
}

write_slurmdbd_conf() {
  DBD_PORT=$(free_port)
  cat >"$STATE_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE_DIR/slurmdbd.pid
LogFile=$STATE_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
  chmod 600 "$STATE_DIR/slurmdbd.conf"
}

write_slurm_conf() {
  local host node_line ctld_port slurmd_port
  host=$(hostname -s)
  # `slurmd -C` prints this machine's NodeName line (CPUs, sockets, cores, RealMemory).
  node_line=$(slurmd -C | head -n 1)
  [[ $node_line == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node_line"
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  cat >"$STATE_DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
JobRequeue=1
# Short grace between SIGTERM and SIGKILL, so scancel/requeue tests do not wait 30 s.
KillWait=5
MinJobAge=600
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# Without this, slurmctld and sacctmgr look for munge in /run/munge.
AccountingStoragePass=$MUNGE_SOCKET
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

node_idle() {
  sinfo -h -o '%T' | grep -Eq '^idle'
}

start_cluster() {
  [ "$(id -u)" = 0 ] || die "start needs root (it runs munged, MariaDB and the SLURM daemons)"
  for cmd in slurmctld slurmd slurmdbd munged mariadbd sinfo sacctmgr; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run '$0 install' first"
  done
  if [ -s "$STATE_DIR/pids" ] && any_alive; then
    log "a cluster is already running from $STATE_DIR"; exit 0
  fi
  mkdir -p "$STATE_DIR"/{state,spool,log}
  chmod 755 "$STATE_DIR"
  : >"$STATE_DIR/pids"
  local t0=$SECONDS
  export SLURM_CONF=$STATE_DIR/slurm.conf
  start_munge
  start_mariadb
  write_slurmdbd_conf
  write_slurm_conf
  start_daemon slurmdbd slurmdbd -D
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME" \
    || sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  start_daemon slurmctld slurmctld -D -f "$SLURM_CONF"
  wait_for 60 slurmctld scontrol ping
  start_daemon slurmd slurmd -D -f "$SLURM_CONF"
  wait_for 60 "the node to be idle" node_idle
  echo "export SLURM_CONF=$SLURM_CONF" >"$STATE_DIR/env"
  log "cluster up in $((SECONDS - t0))s: export SLURM_CONF=$SLURM_CONF"
  sinfo >&2
}

# ------------------------------------------------------------------------------------ stop/status
# pid_matches NAME PID: the PID is alive and still runs the program we started (guards PID reuse).
pid_matches() {
  local name=$1 pid=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  case $name in
    munged) tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q munged ;;
    *) tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name" ;;
  esac
}

any_alive() {
  local name pid
  while read -r name pid; do
    pid_matches "$name" "$pid" && return 0
  done <"$STATE_DIR/pids"
  return 1
}

stop_cluster() {
  [ -f "$STATE_DIR/pids" ] || { log "nothing to stop: no $STATE_DIR/pids"; return 0; }
  export SLURM_CONF=$STATE_DIR/slurm.conf
  if [ -f "$SLURM_CONF" ] && scontrol ping >/dev/null 2>&1; then
    # Jobs' slurmstepd processes outlive slurmd, so cancel this cluster's jobs first.
    scancel --full --user "$(id -un)" >/dev/null 2>&1 || log "scancel failed (continuing)"
    local deadline=$((SECONDS + 20))
    while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  fi
  # Stop in reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged.
  local name pid
  tac "$STATE_DIR/pids" | while read -r name pid; do
    if pid_matches "$name" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do pid_matches "$name" "$pid" || break; sleep 0.25; done
      if pid_matches "$name" "$pid"; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      log "stopped $name (pid $pid)"
    fi
  done
  log "cluster in $STATE_DIR stopped"
}

status_cluster() {
  [ -f "$STATE_DIR/pids" ] || die "no cluster state in $STATE_DIR"
  local name pid rc=0
  while read -r name pid; do
    if pid_matches "$name" "$pid"; then echo "$name $pid running"; else echo "$name $pid stopped"; rc=1; fi
  done <"$STATE_DIR/pids"
  SLURM_CONF=$STATE_DIR/slurm.conf sinfo || rc=1
  return $rc
}

# ------------------------------------------------------------------------------------------- main
usage() { echo "usage: $0 install | start STATE_DIR | stop STATE_DIR | status STATE_DIR" >&2; exit 2; }

cmd=${1:-}
case $cmd in
  install) install_packages ;;
  start|stop|status)
    [ $# -eq 2 ] || usage
    STATE_DIR=$(realpath -m "$2")
    "${cmd}_cluster" ;;
  *) usage ;;
esac
