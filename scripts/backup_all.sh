#!/usr/bin/env bash
# Take a snapshot before a deploy: scripts/backup_all.sh [--notes TEXT] [--local] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
rollback_require_python backup_all
exec "$ROLLBACK_PY" -m manage.rollback snapshot "$@"
