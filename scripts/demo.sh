#!/usr/bin/env bash
# Demo of the main job on local Postgres + Redis, from a fresh machine:
#   set up -> a Flask-Migrate blog (examples/blog) served by gunicorn -> deploy hook "pre" (check, snapshot,
#   warm standby) -> a bad deploy (migration, code, data) that the app's own /readyz rejects -> deploy hook
#   "post" (canary) -> automatic rollback, the app restarted -> the same pages served, fingerprint equal again.
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

PY=$(command -v python || command -v python3)
APP_PORT=$(free_port "${DEMO_APP_PORT:-5078}")
APP_URL="http://127.0.0.1:$APP_PORT"
mkdir -p "$STATE/run"

# The protected app: examples/blog (Flask-SQLAlchemy, Flask-Migrate's own layout, psycopg2, the two lines of
# rollback.flask), checked out as a git repo of its own and served by gunicorn, as its owner would run it.
# The service's settings are the ones docs/quickstart.md names.
export DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/$DB"          # psycopg2: the app's own driver
export DATA_BASE_DIR="$STATE/data" BACKUP_DIR="$STATE/backup" LOG_DIR="$STATE/logs"
export APP_REPO_DIR="$STATE/app" ALEMBIC_CONFIG="$STATE/app/migrations/alembic.ini"
export ALEMBIC_COMMAND="$PY -m flask --app blog db"
export APP_RESTART_COMMAND="kill -HUP \$(cat $STATE/run/app.pid)"
export READYZ_URL="$APP_URL/readyz" READYZ_TABLES=users:3,posts:1 PORT
export CELERY_BROKER_URL=$REDIS_URL CELERY_RESULT_BACKEND=$REDIS_URL
export ROLLBACK_READY_TIMEOUT_SEC=6 ROLLBACK_READY_INTERVAL_SEC=0.5
# The service's console and API (web/), loopback only by default.
export ROLLBACK_ADMIN_USER=admin ROLLBACK_ADMIN_PASSWORD=${DEMO_ADMIN_PASSWORD:-demo-password}
SECRET_KEY=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
ROLLBACK_API_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')
export SECRET_KEY ROLLBACK_API_TOKEN
# The app imports rollback.flask: in production `pip install` of this repository into the app's virtualenv;
# here the app shares this interpreter, so the checkout is put on its path.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
GIT=(git -C "$APP_REPO_DIR" -c user.email=demo@example.com -c user.name=demo)

cp -r examples/blog/. "$APP_REPO_DIR/"
find "$APP_REPO_DIR" -name __pycache__ -prune -exec rm -rf {} +
"${GIT[@]}" init -q -b main && "${GIT[@]}" add -A && "${GIT[@]}" commit -qm "blog v1"
(cd "$APP_REPO_DIR" && "$PY" -m flask --app blog db upgrade 2>&1 | tail -n 1)
"${PSQL[@]}" -d "$DB" -c "insert into users (email, name, bio) values
  ('aiko@example.com', 'Aiko Tanaka', 'Writes about night trains.'), ('ben@example.com', 'Ben Okafor', null),
  ('chloe@example.com', 'Chloé Martin', 'Café notes from Lyon.')"
"${PSQL[@]}" -d "$DB" -c "insert into posts (user_id, title, body) values (1, 'Sleeper to Sapporo', 'Twelve hours, one bento.'),
  (2, 'Why I keep backups', 'Because deploys happen.'), (3, 'Best croissant in Lyon', 'A short list.')"
mkdir -p "$DATA_BASE_DIR/uploads/notes"
echo '[{"id": 1, "name": "Aiko Tanaka"}, {"id": 2, "name": "Ben Okafor"}, {"id": 3, "name": "Chloé Martin"}]' \
  > "$DATA_BASE_DIR/users.json"
echo "京都: bring an umbrella." > "$DATA_BASE_DIR/uploads/notes/kyoto.txt"
head -c 2000000 /dev/urandom > "$DATA_BASE_DIR/uploads/photo.bin"

say "Starting the blog under gunicorn ($APP_URL), the rollback worker and its console (:$PORT)"
(cd "$APP_REPO_DIR" && exec "$PY" -m gunicorn --bind "127.0.0.1:$APP_PORT" --workers 2 --pid "$STATE/run/app.pid" \
  "blog:create_app()" >"$STATE/logs/app.log" 2>&1) &
APP=$!
"$PY" -m flask --app "web:create_app()" run --port "$PORT" >"$STATE/logs/web.log" 2>&1 &
WEB=$!
"$PY" -m celery -A tasks worker --pool solo --concurrency 1 --loglevel INFO >"$STATE/logs/worker.log" 2>&1 &
WORKER=$!
WEB="$WEB $APP"
for _ in $(seq 60); do curl -fsS "$READYZ_URL" >/dev/null 2>&1 && break; sleep 0.5; done
for _ in $(seq 60); do grep -q " ready." "$STATE/logs/worker.log" && break; sleep 0.5; done
echo "the app's own /readyz:"; curl -fsS "$READYZ_URL"; echo

pages() {  # each page: path, HTTP status, digest of the whole body, its text without markup
  for path in / /users/1 /users/3 /uploads/notes/kyoto.txt; do
    body=$(curl -s -w '\n%{http_code}' "$APP_URL$path")
    page=${body%$'\n'*}
    printf '%-26s HTTP %s  sha256 %s  %s\n' "$path" "${body##*$'\n'}" "$(printf '%s' "$page" | sha256sum | cut -c1-12)" \
      "$(printf '%s' "$page" | sed -e 's/<[^>]*>/ /g' | tr -s ' \n' ' ' | cut -c1-160)"
  done
}

say "Blog v1: its pages, and the fingerprint of its state"
pages | tee "$STATE/pages-before.txt"
"$PY" -m manage.rollback fingerprint > "$STATE/before.txt"

say "Deploy hook, before the deploy: check the configuration, snapshot through the worker"
bash scripts/deploy_hook.sh pre --deploy-id demo-1
"$PY" -m manage.rollback list
for _ in $(seq 60); do [ -f "$BACKUP_DIR/standby.json" ] && break; sleep 0.5; done
[ -f "$BACKUP_DIR/standby.json" ] && echo "warm standby of the snapshot prepared in the background"

say "A bad deploy: a migration renames users.name and rewrites rows, the code follows, files are damaged"
cat > "$APP_REPO_DIR/migrations/versions/c2e8f0a4d6b3_display_names.py" <<'PY'
"""rename users.name to display_name, shout it

Revision ID: c2e8f0a4d6b3
Revises: 9a7f3b5c2e14
"""
from alembic import op

revision = 'c2e8f0a4d6b3'
down_revision = '9a7f3b5c2e14'
branch_labels = None
depends_on = None


def upgrade():
    op.alter_column('users', 'name', new_column_name='display_name')
    op.execute("update users set display_name = upper(display_name)")


def downgrade():
    op.alter_column('users', 'display_name', new_column_name='name')
PY
sed -i 's/    name = db.Column(/    name = db.Column("display_name", /' "$APP_REPO_DIR/blog/models.py"
"${GIT[@]}" add -A && "${GIT[@]}" commit -qm "blog v2: display names (bad)"
(cd "$APP_REPO_DIR" && "$PY" -m flask --app blog db upgrade 2>&1 | tail -n 1)
sh -c "$APP_RESTART_COMMAND"
echo '{"users": [{"id": 1, "display_n' > "$DATA_BASE_DIR/users.json"   # cut off mid-write
rm "$DATA_BASE_DIR/uploads/photo.bin"
sleep 2
pages | tee "$STATE/pages-broken.txt"
say "The blog is not ready: its own /readyz"
curl -sS "$READYZ_URL"; echo

say "Deploy hook, after the deploy: the canary sees the app not ready and rolls back by itself"
rc=0
bash scripts/deploy_hook.sh post --deploy-id demo-1 || rc=$?
[ "$rc" -eq 1 ] || die "expected the canary to report 'not ready' (exit 1), got $rc"
"$PY" -m manage.rollback status

say "The running blog after the rollback (same gunicorn master, restarted workers)"
pages | tee "$STATE/pages-after.txt"
curl -fsS "$READYZ_URL"; echo
"$PY" -m manage.rollback fingerprint > "$STATE/after.txt"
echo
grep -E "CANARY|step=restart|step=restore" "$LOG_DIR/rollback.log" | tail -n 8
diff -u "$STATE/pages-before.txt" "$STATE/pages-after.txt" || die "the blog's pages differ from before the deploy"
diff -u "$STATE/before.txt" "$STATE/after.txt" || die "the state after the restore differs from the state before the deploy"
say "OK: the running blog serves its original pages; code, Alembic revision, schema, rows and data directory are exactly as before the deploy"
if [ "${DEMO_KEEP:-0}" = "1" ]; then
  say "Blog: $APP_URL/   Console: http://127.0.0.1:$PORT/admin/rollback/ (user admin, password $ROLLBACK_ADMIN_PASSWORD); Ctrl-C stops"
  echo "API:  curl -X POST -H 'Authorization: Bearer $ROLLBACK_API_TOKEN' -H 'Content-Type: application/json' \\"
  echo "        -d '{\"snapshot_id\": \"latest\"}' http://127.0.0.1:$PORT/admin/rollback/api/restore"
  print_how_to_stop
  wait $APP
fi
