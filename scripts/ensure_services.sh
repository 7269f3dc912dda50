#!/usr/bin/env bash
# Make sure everything the test suite needs is installed and running:
#   apt packages, PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth),
#   Redis on 127.0.0.1:6379, and Python requirements.
# Idempotent: safe to run repeatedly. Targets Debian 12 (bookworm).
# Made for a CI machine of its own: it may create and start the Postgres cluster, add trust lines to its
# pg_hba.conf and start Redis. On a developer's machine use ENSURE_SERVICES_KEEP_CONFIG=1 (what
# scripts/demo.sh does): an existing cluster's configuration is then never changed.
#
# Env knobs:
#   SKIP_PIP=1                        do not pip install requirements.txt
#   SKIP_CHROMIUM=1                   do not install the chromium package
#   ENSURE_SERVICES_PACKAGES_ONLY=1   only install what is missing (apt, pip); never create, start or
#                                     reconfigure a Postgres cluster or a Redis server
#   ENSURE_SERVICES_KEEP_CONFIG=1     create and start what is missing (a brand-new machine ends up ready for
#                                     the tests), but never edit the configuration of a cluster this run did
#                                     not create: without trust auth there, the caller uses a private one
set -euo pipefail

cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
PG_WAIT_SECS=30
REDIS_WAIT_SECS=15

PACKAGES_ONLY=${ENSURE_SERVICES_PACKAGES_ONLY:-0}
KEEP_CONFIG=${ENSURE_SERVICES_KEEP_CONFIG:-0}
CREATED_CLUSTER=0

log() { echo "[ensure_services] $*"; }
die() { echo "[ensure_services] ERROR: $*" >&2; exit 1; }

# Root, or sudo when available.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "warning: not root and sudo not found; privileged steps may fail"
    fi
fi
as_root() { "${SUDO[@]}" "$@"; }

# ---------------------------------------------------------------- helpers --

pg_up() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
    else
        timeout 3 bash -c "exec 3<>/dev/tcp/$PG_HOST/$PG_PORT" >/dev/null 2>&1
    fi
}

# -w: never prompt for a password (a prompt would hang CI).
pg_psql() {
    PGCONNECT_TIMEOUT=5 psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_trust_ok() {
    command -v psql >/dev/null 2>&1 || return 1
    pg_psql -qtAc 'select 1' >/dev/null 2>&1
}

redis_up() {
    command -v redis-cli >/dev/null 2>&1 || return 1
    [ "$(timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

pg_server_installed() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null 2>&1
}

# Newest cluster version under /etc/postgresql (empty if none).
pg_cluster_ver() {
    ls /etc/postgresql 2>/dev/null | sort -V | tail -1
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# Run a command quietly; on failure show the tail of its output and die.
run_quiet() {  # run_quiet <error-message> <cmd...>
    local msg=$1 out
    shift
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        tail -n 40 "$out" >&2
        rm -f "$out"
        die "$msg"
    fi
    rm -f "$out"
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; please install manually: $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        run_quiet "apt-get update failed" as_root apt-get update -q
        APT_UPDATED=1
    fi
    log "apt-get install: $*"
    run_quiet "apt-get install failed for: $*" \
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o DPkg::Lock::Timeout=120 "$@"
}

wait_for() {  # wait_for <seconds> <check-fn>
    local secs=$1 fn=$2 i
    for ((i = 0; i < secs * 2; i++)); do
        "$fn" && return 0
        sleep 0.5
    done
    "$fn"
}

# ------------------------------------------------------ 1. apt packages --

missing=()

# The server binaries: to start the shared cluster, or (packages only) for a private cluster of the
# caller's when trust auth to the shared one does not work.
if [ "$PACKAGES_ONLY" = "1" ]; then
    pg_trust_ok && need_pg_server=0 || need_pg_server=1
else
    pg_up && need_pg_server=0 || need_pg_server=1
fi
if [ "$need_pg_server" -eq 1 ] && ! pg_server_installed; then
    missing+=(postgresql)
fi
if ! command -v psql >/dev/null 2>&1 || ! command -v pg_dump >/dev/null 2>&1 \
        || ! command -v pg_isready >/dev/null 2>&1; then
    # Exact major version is checked against the server below.
    missing+=(postgresql-client)
fi
if ! redis_up && ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
if ! command -v redis-cli >/dev/null 2>&1; then
    missing+=(redis-tools)
fi
for tool in git tar gzip zstd strace curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${SKIP_CHROMIUM:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    log "apt packages: all present"
fi

# -------------------------------------------------------- 2. PostgreSQL --

if [ "$PACKAGES_ONLY" = "1" ]; then
    if pg_trust_ok; then
        log "postgres: trust auth for postgres@$PG_HOST:$PG_PORT ok (left as it is)"
    else
        log "postgres: no trust auth on $PG_HOST:$PG_PORT; left alone (packages only)"
    fi
elif pg_up; then
    log "postgres: already running on $PG_HOST:$PG_PORT"
else
    ver=$(pg_cluster_ver)
    if [ -z "$ver" ]; then
        # Server binaries present but no cluster: create one.
        ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
        [ -n "$ver" ] || die "no PostgreSQL server installation found under /usr/lib/postgresql"
        log "postgres: creating cluster $ver/main"
        as_root pg_createcluster --port="$PG_PORT" "$ver" main >/dev/null \
            || die "pg_createcluster $ver main failed"
        CREATED_CLUSTER=1
    fi
    log "postgres: starting cluster $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start \
        || log "warning: pg_ctlcluster $ver main start returned non-zero (checking readiness anyway)"
    wait_for "$PG_WAIT_SECS" pg_up \
        || die "PostgreSQL not accepting connections on $PG_HOST:$PG_PORT after ${PG_WAIT_SECS}s (see /var/log/postgresql/)"
    log "postgres: ready on $PG_HOST:$PG_PORT"
fi

# Password-less TCP access for user postgres from localhost.
if [ "$PACKAGES_ONLY" = "1" ]; then
    :
elif pg_trust_ok; then
    log "postgres: trust auth for postgres@$PG_HOST ok"
elif [ "$KEEP_CONFIG" = "1" ] && [ "$CREATED_CLUSTER" = "0" ]; then
    log "postgres: no trust auth on the existing cluster at $PG_HOST:$PG_PORT; its configuration is left as it is"
else
    ver=$(pg_cluster_ver)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    [ -n "$ver" ] && as_root test -f "$hba" \
        || die "cannot connect as postgres@$PG_HOST:$PG_PORT without a password, and no local pg_hba.conf found to fix"
    lines=("host all all 127.0.0.1/32 trust" "host all all ::1/128 trust")
    to_add=()
    for l in "${lines[@]}"; do
        as_root grep -qxF "$l" "$hba" || to_add+=("$l")
    done
    if [ "${#to_add[@]}" -gt 0 ]; then
        log "postgres: adding localhost trust lines to top of $hba"
        tmp=$(mktemp)
        { printf '%s\n' "# added by scripts/ensure_services.sh" "${to_add[@]}"; as_root cat "$hba"; } >"$tmp"
        as_root cp "$tmp" "$hba"
        rm -f "$tmp"
    fi
    log "postgres: reloading cluster $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload \
        || die "pg_ctlcluster $ver main reload failed"
    ok=0
    for ((i = 0; i < 20; i++)); do
        if pg_trust_ok; then ok=1; break; fi
        sleep 0.5
    done
    [ "$ok" -eq 1 ] || die "still cannot connect as postgres@$PG_HOST:$PG_PORT without a password (check $hba)"
    log "postgres: trust auth for postgres@$PG_HOST ok"
fi

# pg_dump must be at least the server's major version (packages only, without trust: the newest
# installed server, the one a private cluster would run).
if { [ "$PACKAGES_ONLY" = "1" ] || [ "$KEEP_CONFIG" = "1" ]; } && ! pg_trust_ok; then
    server_major=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)
    [[ "$server_major" =~ ^[0-9]+$ ]] || die "no PostgreSQL server installation found under /usr/lib/postgresql"
else
    server_num=$(pg_psql -qtAc 'show server_version_num' 2>/dev/null | tr -d '[:space:]') \
        || die "could not query server_version_num"
    [[ "$server_num" =~ ^[0-9]+$ ]] || die "unexpected server_version_num: '$server_num'"
    server_major=$((server_num / 10000))
fi
client_major() { pg_dump --version 2>/dev/null | grep -oE '[0-9]+' | head -1; }
cmaj=$(client_major || true)
if [ -z "$cmaj" ] || [ "$cmaj" -lt "$server_major" ]; then
    apt_install "postgresql-client-$server_major"
    cmaj=$(client_major || true)
    [ -n "$cmaj" ] && [ "$cmaj" -ge "$server_major" ] \
        || die "pg_dump on PATH is major ${cmaj:-?} but server is $server_major (pg_wrapper chose an older client; set PGCLUSTER or fix PATH)"
fi
log "postgres: server major $server_major, pg_dump major $cmaj ok"

# ------------------------------------------------------------- 3. Redis --

if [ "$PACKAGES_ONLY" = "1" ]; then
    redis_up && log "redis: answering on $REDIS_HOST:$REDIS_PORT" \
        || log "redis: nothing on $REDIS_HOST:$REDIS_PORT; left alone (packages only)"
elif redis_up; then
    log "redis: already running on $REDIS_HOST:$REDIS_PORT"
else
    command -v redis-server >/dev/null 2>&1 || die "redis-server binary not found"
    log "redis: starting on $REDIS_HOST:$REDIS_PORT"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log \
        || die "redis-server failed to start (see /var/log/redis/ci.log)"
    wait_for "$REDIS_WAIT_SECS" redis_up \
        || die "Redis did not answer PONG on $REDIS_HOST:$REDIS_PORT after ${REDIS_WAIT_SECS}s (see /var/log/redis/ci.log)"
    log "redis: ready (PONG)"
fi

# ------------------------------------------------------ 4. Python deps --

if [ "${SKIP_PIP:-0}" = "1" ]; then
    log "pip: skipped (SKIP_PIP=1)"
else
    if command -v python >/dev/null 2>&1; then
        PY=python
    elif command -v python3 >/dev/null 2>&1; then
        PY=python3
    else
        die "neither python nor python3 found on PATH"
    fi
    [ -f requirements.txt ] || die "requirements.txt not found in $(pwd)"
    "$PY" -m pip --version >/dev/null 2>&1 \
        || die "'$PY -m pip' not available (on Debian: apt-get install python3-pip)"
    # Debian's system python is 'externally managed' (PEP 668); allow installs
    # there when not inside a virtualenv (CI machine).
    if "$PY" -c 'import sys, sysconfig, os; sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)' 2>/dev/null; then
        log "pip: system python is externally managed; setting PIP_BREAK_SYSTEM_PACKAGES=1"
        export PIP_BREAK_SYSTEM_PACKAGES=1
    fi
    log "pip: installing requirements.txt with $PY ($("$PY" --version 2>&1))"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        "$PY" -m pip install -q -r requirements.txt \
        || die "pip install -r requirements.txt failed"
fi

log "all services ready"
