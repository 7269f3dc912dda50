#!/usr/bin/env bash
# Take a snapshot before a deploy: scripts/backup_all.sh [--notes TEXT] [--local] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m manage.rollback snapshot "$@"
