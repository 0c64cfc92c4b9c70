#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests and for
# `cluster=local-slurm`. No systemd: every daemon is started directly and
# stopped through its pid file, so this works in containers and on fresh CI
# machines.
#
# Usage: slurm/local_cluster.sh COMMAND [COMMAND ...]
#   install   apt-get install slurm-wlm, munge (and slurmdbd + mariadb-server
#             for accounting) if they are missing
#   start     write the config and start munged, mariadbd, slurmdbd, slurmctld,
#             slurmd; wait until the node is idle (idempotent)
#   stop      stop the daemons started by `start` (by pid file)
#   status    show the daemons, sinfo and squeue
#   up        install + start (what CI runs)
#   down      stop
#   restart   stop + start
#
# Environment:
#   LOCAL_SLURM_ACCOUNTING=slurmdbd|none  default slurmdbd. Without an
#       accounting daemon `sacct` fails, and submitit then cannot see job states
#       (a job killed by SLURM looks like it is running forever).
#   LOCAL_SLURM_TIMEOUT_S=90   how long `start` waits for each daemon.
#   LOCAL_SLURM_FORCE=1        overwrite an /etc/slurm/slurm.conf this script
#       did not write (refused by default: it may belong to a real cluster).
set -euo pipefail

CLUSTER_NAME=mliplocal
PARTITION=debug
# Partition whose jobs preempt (requeue) jobs in `debug`: lets tests exercise
# real partition preemption on one node.
URGENT_PARTITION=urgent
MARKER="# Written by mlip-scaling slurm/local_cluster.sh"

CONF_DIR=/etc/slurm
SLURM_CONF=$CONF_DIR/slurm.conf
SLURMDBD_CONF=$CONF_DIR/slurmdbd.conf
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
MYSQL_RUN=/run/mysqld
MYSQL_PID=$MYSQL_RUN/mysqld.pid
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
MYSQL_DATA=/var/lib/mysql
DB_NAME=slurm_acct_db
DB_USER=slurm
# A throwaway cluster reachable only through the local socket: a fixed password
# keeps reruns idempotent and is no secret worth protecting.
DB_PASS=mliplocal

ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-slurmdbd}
TIMEOUT_S=${LOCAL_SLURM_TIMEOUT_S:-90}

log() { printf '[local_cluster] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "'$1' needs root (it installs packages and starts system daemons)"
}

case $ACCOUNTING in
    slurmdbd | none) ;;
    *) die "LOCAL_SLURM_ACCOUNTING must be 'slurmdbd' or 'none', got '$ACCOUNTING'" ;;
esac

# ---------------------------------------------------------------- helpers

pid_alive() { # pidfile -> true if it names a live process
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

wait_for() { # description, command...: poll until the command succeeds
    local what=$1 t0=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - t0 < TIMEOUT_S)) || return 1
        sleep 0.5
    done
    log "$what: ready after $((SECONDS - t0))s"
}

fail_with_log() { # message, logfile
    log "ERROR: $1"
    if [[ -f $2 ]]; then
        log "last lines of $2:"
        tail -n 25 "$2" >&2
    fi
    exit 1
}

stop_pidfiles() { # name:pidfile ...: TERM all at once, wait, then KILL stragglers
    local entry name pidfile pid waiting=() stopped=() _
    for entry in "$@"; do
        name=${entry%%:*} pidfile=${entry#*:}
        if pid_alive "$pidfile"; then
            pid=$(<"$pidfile")
            kill -TERM "$pid" 2>/dev/null || true
            waiting+=("$name:$pid")
            stopped+=("$name ($pid)")
        fi
        rm -f "$pidfile"
    done
    for _ in $(seq 1 60); do
        local alive=()
        for entry in "${waiting[@]}"; do
            kill -0 "${entry#*:}" 2>/dev/null && alive+=("$entry")
        done
        waiting=("${alive[@]}")
        ((${#waiting[@]})) || break
        sleep 0.25
    done
    for entry in "${waiting[@]}"; do
        log "${entry%%:*} (pid ${entry#*:}) ignored SIGTERM for 15s; sending SIGKILL"
        kill -KILL "${entry#*:}" 2>/dev/null || true
    done
    ((${#stopped[@]} == 0)) || log "stopped ${stopped[*]}"
}

# ---------------------------------------------------------------- install

packages_wanted() {
    echo slurm-wlm munge
    [[ $ACCOUNTING == slurmdbd ]] && echo slurmdbd mariadb-server
    return 0
}

cmd_install() {
    local missing=() pkg t0=$SECONDS
    for pkg in $(packages_wanted); do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "install: packages already present ($(slurmctld -V))"
        return 0
    fi
    need_root install
    command -v apt-get >/dev/null || die "install: no apt-get; install ${missing[*]} by hand"
    log "install: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Without systemd the packages' postinst cannot start services; a
    # policy-rc.d forbidding it keeps apt from trying (we start them ourselves).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >/tmp/local_cluster_apt.log 2>&1 || rc=$?
    ((created_policy)) && rm -f "$policy"
    ((rc == 0)) || fail_with_log "apt-get install failed (exit $rc)" /tmp/local_cluster_apt.log
    log "install: done in $((SECONDS - t0))s ($(slurmctld -V))"
}

# ---------------------------------------------------------------- config

node_line() {
    # slurmd -C reports this machine's real sockets/cores/threads and memory;
    # a NodeName line that claims more than that makes slurmctld drain the node.
    local line
    line=$(slurmd -C | head -n 1)
    [[ $line == NodeName=* ]] || die "unexpected 'slurmd -C' output: $line"
    echo "$line State=UNKNOWN"
}

write_if_changed() { # path, mode, owner, content on stdin -> returns 0 if changed
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path"
    rm -f "$tmp"
    return 0
}

slurm_conf() {
    local host=$1 accounting_lines
    if [[ $ACCOUNTING == slurmdbd ]]; then
        accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        accounting_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    cat <<EOF
$MARKER: edits are overwritten by 'start'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
# Requeued jobs wait cred_expire seconds before they may start again; the
# default 120 s would dominate every preemption test.
AuthInfo=cred_expire=30
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers/CI VMs: track processes by /proc, bind nothing.
# (No cgroup.conf either: CgroupPlugin=disabled makes this slurmd exit.)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that ask for no memory get a small share instead of the whole node, so
# several test jobs run side by side.
DefMemPerCPU=1024
# A node that went down (e.g. slurmd restarted) comes back by itself.
ReturnToService=2
# Jobs may be requeued (scontrol requeue, submitit's checkpoint-and-requeue,
# preemption) and keep their job id.
JobRequeue=1
# Partition-priority preemption: a job in '$URGENT_PARTITION' requeues jobs in
# '$PARTITION'. preempt_send_user_signal delivers the job's --signal (USR2 for
# submitit) at preemption, so Checkpointable jobs can save before the kill.
# In 22.05 it is a SlurmctldParameters option: under SchedulerParameters it is
# silently ignored and only SIGTERM arrives, which submitit ignores.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
# Seconds between SIGTERM and SIGKILL at time limit, cancel and requeue.
# submitit ignores SIGTERM, so this is how long a job killed without its USR2
# warning keeps running; short keeps restart tests quick.
KillWait=5
# Completed jobs stay visible to squeue/scontrol for 5 minutes.
MinJobAge=300
$accounting_lines
JobCompType=jobcomp/none
$(node_line)
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=$URGENT_PARTITION Nodes=$host Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

slurmdbd_conf() {
    local host=$1
    cat <<EOF
$MARKER: edits are overwritten by 'start'.
AuthType=auth/munge
DbdHost=$host
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# ---------------------------------------------------------------- daemons

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "munge: creating $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    # munged refuses keys and dirs that others can read or write.
    chown munge:munge "$MUNGE_KEY" "$(dirname "$MUNGE_KEY")"
    chmod 400 "$MUNGE_KEY"
    chmod 700 "$(dirname "$MUNGE_KEY")"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    # Already answering (ours or a system munged): leave it alone.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- munged --pid-file="$MUNGE_PID"
    wait_for munged bash -c 'munge -n | unmunge' ||
        fail_with_log "munged did not answer within ${TIMEOUT_S}s" /var/log/munge/munged.log
}

mysql_ping() { mariadb-admin --socket="$MYSQL_SOCK" ping; }

start_mariadb() {
    install -d -o mysql -g root -m 755 "$MYSQL_RUN"
    if [[ ! -d $MYSQL_DATA/mysql ]]; then
        log "mariadb: initialising $MYSQL_DATA"
        mariadb-install-db --user=mysql --datadir="$MYSQL_DATA" >/dev/null
    fi
    if ! mysql_ping >/dev/null 2>&1; then
        # Started directly (not mysqld_safe) so that stop's pid file is the
        # server itself and nothing restarts it behind our back.
        setsid mariadbd --user=mysql --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCK" \
            --pid-file="$MYSQL_PID" --bind-address=127.0.0.1 \
            --log-error="$LOG_DIR/mariadb.log" --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        wait_for mariadbd mysql_ping ||
            fail_with_log "mariadbd did not answer within ${TIMEOUT_S}s" "$LOG_DIR/mariadb.log"
    fi
    # Root logs in through the unix socket (Debian's unix_socket auth).
    mariadb --socket="$MYSQL_SOCK" <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then
        slurmdbd
    fi
    wait_for slurmdbd sacctmgr -n show cluster ||
        fail_with_log "slurmdbd did not answer within ${TIMEOUT_S}s" "$LOG_DIR/slurmdbd.log"
    # slurmctld only sends accounting for a cluster the database knows.
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
        log "slurmdbd: registered cluster $CLUSTER_NAME"
    fi
}

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -n 1; }

node_usable() { # host -> true once the node can run jobs
    case $(node_state "$1") in
        idle* | mixed* | allocated* | completing*) return 0 ;;
        *) return 1 ;;
    esac
}

start_slurm() {
    local host=$1
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
        slurmctld
    fi
    wait_for slurmctld scontrol ping ||
        fail_with_log "slurmctld did not answer within ${TIMEOUT_S}s" "$LOG_DIR/slurmctld.log"
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then
        slurmd
    fi
    # A node left drained or down (an earlier unclean stop, a failed job
    # epilog) stays so until an admin resumes it; we are that admin.
    if ! TIMEOUT_S=10 wait_for "node $host" node_usable "$host"; then
        log "node $host is '$(node_state "$host")'; resuming it"
        scontrol update nodename="$host" state=resume || true
        wait_for "node $host" node_usable "$host" ||
            fail_with_log "node $host is '$(node_state "$host")', not idle; $(scontrol show node "$host" | grep -o 'Reason=.*' || true)" \
                "$LOG_DIR/slurmd.log"
    fi
}

cmd_start() {
    need_root start
    command -v slurmctld >/dev/null || die "start: SLURM is not installed; run '$0 install' first"
    if [[ $ACCOUNTING == slurmdbd ]] && ! command -v slurmdbd >/dev/null; then
        die "start: slurmdbd is not installed; run '$0 install' (or LOCAL_SLURM_ACCOUNTING=none)"
    fi
    if [[ -f $SLURM_CONF ]] && ! grep -qF "$MARKER" "$SLURM_CONF" && [[ ${LOCAL_SLURM_FORCE:-0} != 1 ]]; then
        die "$SLURM_CONF was not written by this script (a real cluster's?); refusing to overwrite it. Set LOCAL_SLURM_FORCE=1 to override."
    fi
    local t0=$SECONDS host changed=0
    host=$(hostname -s)
    install -d -o slurm -g slurm -m 755 "$STATE_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" \
        "$LOG_DIR" "$RUN_DIR" "$CONF_DIR"
    slurm_conf "$host" | write_if_changed "$SLURM_CONF" 644 root:root && changed=1
    if [[ $ACCOUNTING == slurmdbd ]]; then
        # slurmdbd refuses a config (it holds the DB password) others can read.
        slurmdbd_conf "$host" | write_if_changed "$SLURMDBD_CONF" 600 slurm:slurm && changed=1
    fi
    if ((changed)) && { pid_alive "$RUN_DIR/slurmctld.pid" || pid_alive "$RUN_DIR/slurmd.pid"; }; then
        log "config changed; restarting the SLURM daemons"
        stop_slurm_daemons
    fi

    start_munge
    if [[ $ACCOUNTING == slurmdbd ]]; then
        start_mariadb
        start_slurmdbd
    fi
    start_slurm "$host"
    log "start: cluster '$CLUSTER_NAME' up in $((SECONDS - t0))s (node $host, partitions $PARTITION, $URGENT_PARTITION; accounting $ACCOUNTING)"
}

stop_slurm_daemons() {
    stop_pidfiles slurmd:"$RUN_DIR/slurmd.pid" slurmctld:"$RUN_DIR/slurmctld.pid" \
        slurmdbd:"$RUN_DIR/slurmdbd.pid"
}

cmd_stop() {
    need_root stop
    stop_slurm_daemons
    # After the SLURM daemons: slurmdbd flushes to the database and everything
    # authenticates through munge until it exits.
    stop_pidfiles mariadbd:"$MYSQL_PID" munged:"$MUNGE_PID"
}

cmd_status() {
    local name pidfile
    for name in munged:$MUNGE_PID mariadbd:$MYSQL_PID slurmdbd:$RUN_DIR/slurmdbd.pid \
        slurmctld:$RUN_DIR/slurmctld.pid slurmd:$RUN_DIR/slurmd.pid; do
        pidfile=${name#*:}
        if pid_alive "$pidfile"; then
            printf '%-10s running (pid %s)\n' "${name%%:*}" "$(<"$pidfile")"
        else
            printf '%-10s stopped\n' "${name%%:*}"
        fi
    done
    if command -v sinfo >/dev/null && sinfo >/dev/null 2>&1; then
        sinfo
        squeue
    else
        echo "sinfo: no answer (cluster not running)"
        return 1
    fi
}

# ---------------------------------------------------------------- main

(($# > 0)) || {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}
for cmd in "$@"; do
    case $cmd in
        install) cmd_install ;;
        start) cmd_start ;;
        stop | down) cmd_stop ;;
        status) cmd_status ;;
        up) cmd_install && cmd_start ;;
        restart) cmd_stop && cmd_start ;;
        -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (install|start|stop|status|up|down|restart)" ;;
    esac
done
