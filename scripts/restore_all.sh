#!/usr/bin/env bash
# Restore a snapshot (default: the newest): scripts/restore_all.sh [--snapshot ID] [--reason R] [--local]
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=latest
reason=manual
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --snapshot) snapshot=${2:?--snapshot needs an id}; shift 2 ;;
    --reason) reason=${2:?--reason needs a text}; shift 2 ;;
    -h|--help) sed -n 2p "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
. scripts/_python.sh
rollback_require_python restore_all
exec "$ROLLBACK_PY" -m manage.rollback restore --snapshot "$snapshot" --reason "$reason" --yes ${extra[@]+"${extra[@]}"}
