#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for trying `hydra/launcher=slurm` and for CI.
#
#   scripts/slurm-local-cluster.sh install   # apt-get Debian's packages (skipped when present); needs root
#   scripts/slurm-local-cluster.sh start     # install if needed, then start every daemon and wait until usable
#   scripts/slurm-local-cluster.sh status    # what runs; exit 0 when the cluster is usable, 3 when not
#   scripts/slurm-local-cluster.sh env       # the line to eval: export SLURM_CONF=...
#   scripts/slurm-local-cluster.sh stop      # stop the daemons this script started (by PID file)
#
# Daemons: munged, mariadbd, slurmdbd, slurmctld, slurmd. Accounting (slurmdbd + MariaDB) is
# there for `sacct`: submitit polls sacct to learn that a job died without writing its result
# (SIGKILL, OOM, time limit). Without it such a job would leave the sweep waiting forever.
#
# Everything lives under $GSDEFENSE_SLURM_DIR (default /tmp/gsdefense-slurm): configs in etc/,
# PID files in run/, logs in log/, Slurm state in state/ and spool/, the database in mysql/.
# Nothing in /etc is changed; the client commands find the cluster through SLURM_CONF.
# Runs as root (SlurmUser=root), without systemd or cgroups.
set -euo pipefail

DIR=${GSDEFENSE_SLURM_DIR:-/tmp/gsdefense-slurm}
CLUSTER=gsdefense
PARTITION=debug
CTLD_PORT=${GSDEFENSE_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${GSDEFENSE_SLURMD_PORT:-6818}
DBD_PORT=${GSDEFENSE_SLURMDBD_PORT:-6819}
DB_PORT=${GSDEFENSE_SLURM_DB_PORT:-16819} # MariaDB on 127.0.0.1, away from a system server on 3306
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mariadbd mariadb-install-db)
# Start order; stop goes the other way.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

export SLURM_CONF="$DIR/etc/slurm.conf"
# Slurm's clients (sacctmgr, sacct) only find munged on its default socket.
MUNGE_SOCKET=/run/munge/munge.socket.2
DB_SOCKET="$DIR/mysql/mysqld.sock"

log() { echo "slurm-local-cluster: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- helpers ---------------------------------------------------------------------------------

pidfile() {
    case $1 in
    munged) echo "$DIR/munge/munged.pid" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.pid" ;;
    *) echo "$DIR/run/$1.pid" ;;
    esac
}

logfile() {
    case $1 in
    munged) echo "$DIR/munge/munged.log" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.log" ;;
    *) echo "$DIR/log/$1.log" ;;
    esac
}

# Whether PID runs. A daemon that exited stays a zombie until init reaps it, which some
# container inits do late, so kill -0 is not enough.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the fields after "(comm) "; the first is the state
    [[ ${stat%% *} != Z ]]
}

# The PID of a daemon this script started, if it still runs. The process name is checked too,
# so that a recycled PID is never taken for ours.
running_pid() {
    local file pid
    file=$(pidfile "$1")
    [[ -s $file ]] || return 1
    pid=$(tr -dc 0-9 <"$file")
    [[ -n $pid ]] && alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
    echo "$pid"
}

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.2 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "$what not ready after ${seconds}s"
            return 1
        fi
        sleep 0.2
    done
}

fail_start() {
    local daemon=$1
    log "$daemon did not come up; last lines of $(logfile "$daemon"):"
    tail -n 30 "$(logfile "$daemon")" >&2 2>/dev/null || true
    exit 1
}

# --- install ---------------------------------------------------------------------------------

installed() {
    local bin
    for bin in "${BINARIES[@]}"; do
        command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    if installed; then
        log "packages already installed"
        return 0
    fi
    ((EUID == 0)) || die "installing needs root (apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || die "no apt-get: install ${PACKAGES[*]} by hand"
    # Keep the packages' own init scripts from starting system daemons: this script runs its own.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    } >"${TMPDIR:-/tmp}/gsdefense-slurm-apt.log" 2>&1 || rc=$?
    if ((added_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    if ((rc != 0)); then
        tail -n 20 "${TMPDIR:-/tmp}/gsdefense-slurm-apt.log" >&2
        die "apt-get install failed"
    fi
    installed || die "packages installed but a binary is missing (${BINARIES[*]})"
    log "installed ${PACKAGES[*]}"
}

# --- configuration ---------------------------------------------------------------------------

write_configs() {
    local cpus mem_mb db_pass
    cpus=$(nproc)
    # A bit under the memory available now: a node claiming more than it has is drained.
    mem_mb=$(awk '/^MemAvailable:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR"/{etc,run,log,state,spool}
    chmod 755 "$DIR"

    cat >"$SLURM_CONF" <<EOF
# Written by scripts/slurm-local-cluster.sh; regenerated at every start.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$(logfile slurmctld)
SlurmdLogFile=$(logfile slurmd)
# No systemd, no cgroups: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# Accounting, so that sacct answers (submitit polls it to see a job that died).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or out of time
# (real clusters: 30). submitit ignores SIGTERM, so a requeued run goes on until the SIGKILL.
KillWait=2
# Finished jobs stay visible in squeue / scontrol for this long.
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

    # The database password is made once and kept with the database.
    if [[ ! -s $DIR/etc/db-password ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/etc/db-password")
    fi
    db_pass=$(cat "$DIR/etc/db-password")
    # slurmdbd reads slurmdbd.conf next to SLURM_CONF; it must be private to SlurmUser.
    (
        umask 077
        cat >"$DIR/etc/slurmdbd.conf" <<EOF
# Written by scripts/slurm-local-cluster.sh; regenerated at every start.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$(logfile slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
    )
}

# --- daemons ---------------------------------------------------------------------------------

munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_munged() {
    if munge_works >/dev/null 2>&1; then
        # A munged we did not start (the system's) already serves the socket: use it, and
        # leave it alone at stop.
        log "using the munged already serving $MUNGE_SOCKET"
        return 0
    fi
    # munged insists that its directories belong to it and are not writable by others.
    mkdir -p "$DIR/munge" /run/munge
    chown munge:munge "$DIR/munge" /run/munge
    chmod 755 "$DIR/munge" /run/munge
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        key=$DIR/munge/munge.key
        [[ -s $key ]] || runuser -u munge -- mungekey --create --keyfile="$key"
    fi
    # --force: take over a stale socket left by a munged that died (none answers, checked above).
    runuser -u munge -- munged --force --socket="$MUNGE_SOCKET" --key-file="$key" \
        --pid-file="$(pidfile munged)" --log-file="$(logfile munged)" \
        --seed-file="$DIR/munge/munged.seed" </dev/null >/dev/null 2>&1 || fail_start munged
    wait_for 10 munged munge_works || fail_start munged
}

start_mariadbd() {
    local fresh=0
    mkdir -p "$DIR/mysql"
    chown mysql:mysql "$DIR/mysql"
    if [[ ! -d $DIR/mysql/data/mysql ]]; then
        fresh=1
        mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
            --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install-db.log" 2>&1 ||
            {
                tail -n 20 "$DIR/log/mariadb-install-db.log" >&2
                die "mariadb-install-db failed"
            }
    fi
    # mariadbd does not fork: detach it into its own session, like the other daemons.
    setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$(pidfile mariadbd)" --log-error="$(logfile mariadbd)" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping || fail_start mariadbd
    wait_for 10 mariadbd running_pid mariadbd || fail_start mariadbd
    # (Re)grant every start: the password file is the source of truth.
    mariadb --no-defaults --socket="$DB_SOCKET" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$DIR/etc/db-password")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
    ((fresh)) && log "created the accounting database in $DIR/mysql/data"
    return 0
}

start_slurmdbd() {
    slurmdbd </dev/null >/dev/null 2>&1 || fail_start slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster || fail_start slurmdbd
    # slurmctld only sends job records for a cluster the database knows.
    if [[ -z $(sacctmgr -n -P show cluster format=cluster where cluster="$CLUSTER") ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    slurmctld </dev/null >/dev/null 2>&1 || fail_start slurmctld
    wait_for 30 slurmctld bash -c "scontrol ping | grep -q UP" || fail_start slurmctld
}

node_idle() {
    local state
    state=$(sinfo -h -n localhost -o %t)
    [[ $state == idle || $state == mix || $state == alloc ]]
}

start_slurmd() {
    slurmd -N localhost </dev/null >/dev/null 2>&1 || fail_start slurmd
    wait_for 30 "node localhost" node_idle || fail_start slurmd
}

cmd_start() {
    cmd_install
    ((EUID == 0)) || die "start needs root (SlurmUser=root)"
    local daemon pid started=0
    write_configs
    for daemon in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$daemon"); then
            log "$daemon already running (pid $pid)"
            continue
        fi
        "start_$daemon"
        if pid=$(running_pid "$daemon"); then
            log "$daemon started (pid $pid)"
            started=1
        fi
    done
    if ((started == 0)); then
        # Nothing new: pick up a regenerated slurm.conf, if it changed.
        scontrol reconfigure >/dev/null 2>&1 || true
    fi
    wait_for 30 sacct sacct -n -X -a || fail_start slurmdbd
    log "cluster up; in your shell: export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    local i daemon pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        daemon=${DAEMONS[i]}
        if ! pid=$(running_pid "$daemon"); then
            rm -f "$(pidfile "$daemon")"
            continue
        fi
        kill -TERM "$pid"
        # Give it 20 s to shut down cleanly, then kill it.
        if ! wait_for 20 "$daemon exit" eval "! alive $pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$(pidfile "$daemon")"
        log "$daemon stopped (pid $pid)"
    done
}

cmd_status() {
    local daemon pid up=0
    for daemon in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$daemon"); then
            printf '%-10s running (pid %s)\n' "$daemon" "$pid"
            up=$((up + 1))
        elif [[ $daemon == munged ]] && munge_works >/dev/null 2>&1; then
            printf '%-10s running (not started by this script)\n' "$daemon"
            up=$((up + 1))
        else
            printf '%-10s stopped\n' "$daemon"
        fi
    done
    if ((up == ${#DAEMONS[@]})) && node_idle 2>/dev/null && sacct -n -X -a >/dev/null 2>&1; then
        sinfo
        echo "export SLURM_CONF=$SLURM_CONF"
        return 0
    fi
    echo "cluster not usable (start it: $0 start)"
    return 3
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$SLURM_CONF" ;;
*)
    echo "usage: $0 install|start|stop|status|env" >&2
    exit 2
    ;;
esac
