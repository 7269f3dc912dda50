#!/usr/bin/env bash
# Deploy hook, talking to the worker through the broker (on Render only the instance owning the disk
# can read BACKUP_DIR, so nothing here touches it):
#   scripts/deploy_hook.sh pre  [--deploy-id D]   check the configuration on the worker, then snapshot with
#                                                 notes "deploy <UTC time> [id=D]" and wait for it
#   scripts/deploy_hook.sh post [--deploy-id D] [--snapshot ID] [--no-wait] [--json]
#                                                 enqueue the canary (followed unless --no-wait)
# On Render the deploy id defaults to render-<first 12 of RENDER_GIT_COMMIT>, the same in both phases.
# DEPLOY_HOOK_SKIP_PRE=1 skips the check and the snapshot (the very first deploy: no worker is running yet).
# DEPLOY_HOOK_SKIP_CHECK=1 takes the snapshot even when `check` fails (a hotfix while the app is down).
# Python: ROLLBACK_PYTHON, else this service's .venv/venv, else python3 (scripts/_python.sh).
# Exit codes are the CLI's: 0 ok / ready, 1 failed / not ready (rolled back or not), 2 bad input, 3 busy.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

default_id=${RENDER_GIT_COMMIT:+render-${RENDER_GIT_COMMIT:0:12}}

# A prune or standby publication holds the service lock for a moment: a busy snapshot is retried.
BUSY_RETRIES=${DEPLOY_HOOK_BUSY_RETRIES:-10}
BUSY_SLEEP=${DEPLOY_HOOK_BUSY_SLEEP:-2}

usage() { sed -n 2,13p "$0" >&2; exit 2; }

check() {
  if [ "${DEPLOY_HOOK_SKIP_CHECK:-0}" = "1" ]; then
    echo "deploy_hook: DEPLOY_HOOK_SKIP_CHECK=1, configuration not checked" >&2
    return 0
  fi
  local where=--worker rc=0
  case " $* " in *" --local "*) where= ;; esac
  # On stderr: stdout stays the snapshot's (--json).
  "$ROLLBACK_PY" -m manage.rollback check $where >&2 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "deploy_hook: the configuration check failed (FAIL lines above): no snapshot taken, the deploy must" \
         "not go on. Fix the cause, or set DEPLOY_HOOK_SKIP_CHECK=1 to snapshot anyway." >&2
    return "$rc"
  fi
}

pre() {
  if [ "${DEPLOY_HOOK_SKIP_PRE:-0}" = "1" ]; then
    echo "deploy_hook: DEPLOY_HOOK_SKIP_PRE=1, no snapshot taken" >&2
    return 0
  fi
  local deploy_id=$default_id extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --deploy-id) deploy_id=${2:?--deploy-id needs a value}; shift 2 ;;
      *) extra+=("$1"); shift ;;
    esac
  done
  check ${extra[@]+"${extra[@]}"} || return $?
  local notes
  notes="deploy $(date -u +%Y-%m-%dT%H:%M:%SZ)${deploy_id:+ id=$deploy_id}"
  local attempt=0 rc
  while :; do
    rc=0
    "$ROLLBACK_PY" -m manage.rollback snapshot --notes "$notes" ${extra[@]+"${extra[@]}"} || rc=$?
    if [ "$rc" -ne 3 ] || [ "$attempt" -ge "$BUSY_RETRIES" ]; then
      return "$rc"
    fi
    attempt=$((attempt + 1))
    echo "deploy_hook: service busy, retrying the snapshot in ${BUSY_SLEEP}s ($attempt/$BUSY_RETRIES)" >&2
    sleep "$BUSY_SLEEP"
  done
}

post() {
  # The canary watches (and may roll back) only when it names a deploy; without any id it would
  # merely probe /readyz once, so the hook always gives one.
  case " $* " in
    *" --deploy-id "*) exec "$ROLLBACK_PY" -m manage.rollback canary "$@" ;;
    *) exec "$ROLLBACK_PY" -m manage.rollback canary --deploy-id "${default_id:-deploy-$(date -u +%Y%m%dT%H%M%SZ)-$$}" "$@" ;;
  esac
}

phase=${1:-}
[ $# -gt 0 ] && shift
case "$phase" in
  pre) rollback_require_python deploy_hook; pre "$@" ;;
  post) rollback_require_python deploy_hook; post "$@" ;;
  *) usage ;;
esac
