#!/usr/bin/env bash
# Demo of the main job on local Postgres + Redis, from a fresh machine:
#   set up -> app v1 running -> deploy hook "pre" (snapshot + warm standby) -> a bad deploy that breaks
#   /readyz -> deploy hook "post" (canary) -> automatic rollback -> fingerprint equal again.
# Everything it creates lives in ./demo-state and the database rollback_demo (re-created each run).
# DEMO_KEEP=1 keeps the web console (/admin/rollback) and the worker running at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SKIP_CHROMIUM=${SKIP_CHROMIUM:-1} bash scripts/ensure_services.sh

STATE=${DEMO_STATE_DIR:-$ROOT/demo-state}
DB=${DEMO_DB:-rollback_demo}
PORT=${DEMO_PORT:-5077}
PSQL=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Preparing a fresh demo app in $STATE (database $DB)"
rm -rf "$STATE"
mkdir -p "$STATE"/{app,data/uploads,logs}
for old in $("${PSQL[@]}" -d postgres -c "select datname from pg_database where datname = '$DB' or datname like '${DB}\_\_%'"); do
  "${PSQL[@]}" -d postgres -c "DROP DATABASE \"$old\" WITH (FORCE)"
done
"${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$DB\""

export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/$DB"
export DATA_BASE_DIR="$STATE/data" BACKUP_DIR="$STATE/backup" LOG_DIR="$STATE/logs"
export APP_REPO_DIR="$STATE/app" ALEMBIC_CONFIG="$STATE/app/alembic.ini"
export READYZ_URL="http://127.0.0.1:$PORT/readyz" PORT
export CELERY_BROKER_URL=${DEMO_REDIS_URL:-redis://127.0.0.1:6379/14} CELERY_RESULT_BACKEND=${DEMO_REDIS_URL:-redis://127.0.0.1:6379/14}
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
trap 'kill $WEB $WORKER 2>/dev/null; wait $WEB $WORKER 2>/dev/null || true' EXIT
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
  wait $WEB
fi
