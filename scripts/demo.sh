#!/usr/bin/env bash
# Demo of the main job on local Postgres + Redis, from a fresh machine:
#   set up -> app v1 running -> deploy hook "pre" (snapshot + warm standby) -> a bad deploy that breaks
#   /readyz -> deploy hook "post" (canary) -> automatic rollback -> fingerprint equal again.
# Everything it creates lives in ./demo-state and the database rollback_demo (re-created each run).
# DEMO_KEEP=1 keeps the web console (/admin/rollback) and the worker running at the end.
#
# Servers: it never changes the configuration of the machine's own Postgres, and never stops it or Redis
# (on a brand-new machine scripts/ensure_services.sh creates and starts them, ready for the tests). It uses
# postgres@127.0.0.1:5432 when trust auth works there, and Redis on 127.0.0.1:6379 when it answers;
# otherwise (or with DEMO_PRIVATE_SERVICES=1) it starts its own under ./demo-state (a cluster made by
# initdb, trust auth, on port 5499 or a free one; a redis-server on 6399 or a free one), stopped at
# the end unless DEMO_KEEP=1. DEMO_REDIS_URL forces a broker URL.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SKIP_CHROMIUM=${SKIP_CHROMIUM:-1} ENSURE_SERVICES_KEEP_CONFIG=1 bash scripts/ensure_services.sh

STATE=${DEMO_STATE_DIR:-$ROOT/demo-state}
DB=${DEMO_DB:-rollback_demo}
PORT=${DEMO_PORT:-5077}
PRIVATE=${DEMO_PRIVATE_SERVICES:-0}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { say "FAILED: $*"; exit 1; }

# -- the servers: the machine's when they fit, else private ones under $STATE ---------------------------
PG_PORT=5432
PG_PRIVATE=""     # data dir of the private cluster, when started
REDIS_PRIVATE=""  # pid file of the private redis-server, when started
WEB="" WORKER=""

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {  # free_port <preferred>
  if ! port_taken "$1"; then echo "$1"; return; fi
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
shared_pg_trusted() {
  PGCONNECT_TIMEOUT=5 psql -X -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -qtAc 'select 1' >/dev/null 2>&1
}
shared_redis_up() { [ "$(timeout 5 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }
as_pg_owner() {  # initdb and postgres refuse root
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

stop_private_services() {  # stop_private_services <state dir>: also those of an earlier DEMO_KEEP=1 run
  local pgdata=$1/pg redis_pid=$1/redis/redis.pid bin
  bin=$(pg_bin)
  if [ -f "$pgdata/postmaster.pid" ] && [ -n "$bin" ]; then
    as_pg_owner "$bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$redis_pid" ] && grep -q redis-server "/proc/$(cat "$redis_pid")/cmdline" 2>/dev/null; then
    kill "$(cat "$redis_pid")" 2>/dev/null || true
    for _ in $(seq 50); do [ -f "$redis_pid" ] || break; sleep 0.1; done
  fi
}

start_private_postgres() {
  local bin
  bin=$(pg_bin)
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || die "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)"
  PG_PRIVATE=$STATE/pg
  PG_PORT=$(free_port 5499)
  if [ "$(id -u)" -eq 0 ]; then
    install -d -o postgres -g postgres -m 700 "$PG_PRIVATE"
    runuser -u postgres -- test -w "$PG_PRIVATE" \
      || die "the postgres user cannot reach $PG_PRIVATE; set DEMO_STATE_DIR to a directory it can reach"
  fi
  as_pg_owner "$bin/initdb" -D "$PG_PRIVATE" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
    --no-instructions >"$STATE/logs/initdb.log" 2>&1 || die "initdb failed (see $STATE/logs/initdb.log)"
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" "$PG_PORT" \
    | as_pg_owner tee -a "$PG_PRIVATE/postgresql.conf" >/dev/null
  as_pg_owner "$bin/pg_ctl" -D "$PG_PRIVATE" -l "$PG_PRIVATE/server.log" -w -t 60 start >/dev/null \
    || die "the private Postgres did not start (see $PG_PRIVATE/server.log)"
  echo "private Postgres (initdb, trust auth) on 127.0.0.1:$PG_PORT, data in $PG_PRIVATE"
}

start_private_redis() {
  local port
  port=$(free_port 6399)
  mkdir -p "$STATE/redis"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$STATE/redis" \
    --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/logs/redis.log" || die "redis-server did not start"
  REDIS_PRIVATE=$STATE/redis/redis.pid
  for _ in $(seq 50); do [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] && break; sleep 0.1; done
  [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] || die "the private Redis does not answer (see $STATE/logs/redis.log)"
  REDIS_URL="redis://127.0.0.1:$port/0"
  echo "private Redis on 127.0.0.1:$port, dir $STATE/redis"
}

on_exit() {
  if [ -n "$WEB$WORKER" ]; then
    kill $WEB $WORKER 2>/dev/null || true
    wait $WEB $WORKER 2>/dev/null || true
  fi
  [ -n "$PG_PRIVATE$REDIS_PRIVATE" ] || return 0
  if [ "${DEMO_KEEP:-0}" = "1" ]; then
    print_how_to_stop
  else
    stop_private_services "$STATE"
  fi
}

print_how_to_stop() {
  [ -n "$PG_PRIVATE$REDIS_PRIVATE" ] || return 0
  local as_owner=""
  [ "$(id -u)" -eq 0 ] && as_owner="runuser -u postgres -- "
  echo "The demo's private servers keep running (the next run of the demo stops them too). To stop them:"
  [ -z "$PG_PRIVATE" ] || echo "  $as_owner$(pg_bin)/pg_ctl -D $PG_PRIVATE stop"
  [ -z "$REDIS_PRIVATE" ] || echo "  kill \$(cat $REDIS_PRIVATE)"
}

say "Preparing a fresh demo app in $STATE (database $DB)"
stop_private_services "$STATE"  # an earlier DEMO_KEEP=1 run's, whose files are about to go
rm -rf "$STATE"
mkdir -p "$STATE"/{app,data/uploads,logs}
trap on_exit EXIT
if [ "$PRIVATE" != "1" ] && shared_pg_trusted; then
  echo "Postgres: postgres@127.0.0.1:5432 (trust auth)"
else
  start_private_postgres
fi
if [ -n "${DEMO_REDIS_URL:-}" ]; then
  REDIS_URL=$DEMO_REDIS_URL
elif [ "$PRIVATE" != "1" ] && shared_redis_up; then
  REDIS_URL=redis://127.0.0.1:6379/14
  echo "Redis: 127.0.0.1:6379, DB 14"
else
  start_private_redis
fi
PSQL=(psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
for old in $("${PSQL[@]}" -d postgres -c "select datname from pg_database where datname = '$DB' or datname like '${DB}\_\_%'"); do
  "${PSQL[@]}" -d postgres -c "DROP DATABASE \"$old\" WITH (FORCE)"
done
"${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$DB\""

export DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/$DB"
export DATA_BASE_DIR="$STATE/data" BACKUP_DIR="$STATE/backup" LOG_DIR="$STATE/logs"
export APP_REPO_DIR="$STATE/app" ALEMBIC_CONFIG="$STATE/app/alembic.ini"
export READYZ_URL="http://127.0.0.1:$PORT/readyz" PORT
export CELERY_BROKER_URL=$REDIS_URL CELERY_RESULT_BACKEND=$REDIS_URL
export ROLLBACK_READY_TIMEOUT_SEC=6 ROLLBACK_READY_INTERVAL_SEC=0.5
# The console and the API (web/), loopback only by default; /readyz also checks users.json and the tables.
export ROLLBACK_ADMIN_USER=admin ROLLBACK_ADMIN_PASSWORD=${DEMO_ADMIN_PASSWORD:-demo-password}
SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')
ROLLBACK_API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
export SECRET_KEY ROLLBACK_API_TOKEN READYZ_TABLES=users:1,trips

# The protected app: this repo's alembic.ini + migrations, in a git repo of its own.
cp alembic.ini "$APP_REPO_DIR/"
cp -r migrations "$APP_REPO_DIR/"
find "$APP_REPO_DIR" -name __pycache__ -prune -exec rm -rf {} +
git -C "$APP_REPO_DIR" init -q -b main
git -C "$APP_REPO_DIR" -c user.email=demo@example.com -c user.name=demo add -A
git -C "$APP_REPO_DIR" -c user.email=demo@example.com -c user.name=demo commit -qm "app v1"
python -m alembic -c "$ALEMBIC_CONFIG" upgrade head 2>/dev/null
"${PSQL[@]}" -d "$DB" -c "insert into users (email, name) select 'user'||i||'@example.com', 'User '||i from generate_series(1, 1000) i"
"${PSQL[@]}" -d "$DB" -c "insert into trips (user_id, title, plan) select i, 'Trip '||i, jsonb_build_object('days', i % 7) from generate_series(1, 1000) i"
echo '[{"id": 1, "name": "Aiko"}]' > "$DATA_BASE_DIR/users.json"
echo "京都 → 大阪" > "$DATA_BASE_DIR/uploads/旅行メモ.txt"
head -c 2000000 /dev/urandom > "$DATA_BASE_DIR/uploads/photo.bin"
ln -s users.json "$DATA_BASE_DIR/current.json"

say "Starting the web app (:$PORT) and a Celery worker"
python -m flask --app "web:create_app()" run --port "$PORT" >"$STATE/logs/web.log" 2>&1 &
WEB=$!
python -m celery -A tasks worker --pool solo --concurrency 1 --loglevel INFO >"$STATE/logs/worker.log" 2>&1 &
WORKER=$!
for _ in $(seq 60); do curl -fsS "$READYZ_URL" >/dev/null 2>&1 && break; sleep 0.5; done
for _ in $(seq 60); do grep -q " ready." "$STATE/logs/worker.log" && break; sleep 0.5; done
curl -fsS "$READYZ_URL"; echo

say "State of app v1"
python -m manage.rollback fingerprint | tee "$STATE/before.txt"

say "Deploy hook, before the deploy: snapshot through the worker"
bash scripts/deploy_hook.sh pre --deploy-id demo-1
python -m manage.rollback list
for _ in $(seq 60); do [ -f "$BACKUP_DIR/standby.json" ] && break; sleep 0.5; done
[ -f "$BACKUP_DIR/standby.json" ] && echo "warm standby of the snapshot prepared in the background"

say "A bad deploy: new commit with a migration, rows changed, files changed"
cat > "$APP_REPO_DIR/migrations/versions/0003_bad.py" <<'PY'
"""bad deploy: adds a column and a table

Revision ID: 0003_bad
Revises: 0002_trips
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_bad"
down_revision = "0002_trips"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("users", sa.Column("nickname", sa.String(50)))
    op.create_table("audit_events", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("audit_events")
    op.drop_column("users", "nickname")
PY
git -C "$APP_REPO_DIR" -c user.email=demo@example.com -c user.name=demo add -A
git -C "$APP_REPO_DIR" -c user.email=demo@example.com -c user.name=demo commit -qm "app v2 (bad)"
python -m alembic -c "$ALEMBIC_CONFIG" upgrade head 2>/dev/null
"${PSQL[@]}" -d "$DB" -c "update users set name = 'oops' where id <= 100; delete from trips where id > 900"
echo "garbage" > "$DATA_BASE_DIR/users.json"
rm "$DATA_BASE_DIR/uploads/photo.bin"
python -m manage.rollback fingerprint | tee "$STATE/broken.txt"

say "The app is broken: /readyz"
curl -sS "$READYZ_URL"; echo

say "Deploy hook, after the deploy: the canary sees /readyz failing and rolls back by itself"
rc=0
bash scripts/deploy_hook.sh post --deploy-id demo-1 || rc=$?
[ "$rc" -eq 1 ] || { say "FAILED: expected the canary to report 'not ready' (exit 1), got $rc"; exit 1; }
python -m manage.rollback status
curl -fsS "$READYZ_URL"; echo

say "State after the restore"
python -m manage.rollback fingerprint | tee "$STATE/after.txt"
echo
grep -E "CANARY|step=restore|status=ok" "$LOG_DIR/rollback.log" | tail -n 12
if diff -u "$STATE/before.txt" "$STATE/after.txt"; then
  say "OK: code, Alembic revision, schema, rows and data directory are exactly as before the deploy"
else
  say "FAILED: the state after the restore differs from the state before the deploy"; exit 1
fi
if [ "${DEMO_KEEP:-0}" = "1" ]; then
  say "Console: http://127.0.0.1:$PORT/admin/rollback/ (user admin, password $ROLLBACK_ADMIN_PASSWORD); Ctrl-C stops"
  echo "API:  curl -X POST -H 'Authorization: Bearer $ROLLBACK_API_TOKEN' -H 'Content-Type: application/json' \\"
  echo "        -d '{\"snapshot_id\": \"latest\", \"reason\": \"demo\"}' http://127.0.0.1:$PORT/admin/rollback/api/restore"
  print_how_to_stop
  wait $WEB
fi
