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
# With CODE_ROLLBACK_STRATEGY=render, `pre` skips the deploy a restore itself started (see restore_deploy).
# Python: ROLLBACK_PYTHON, else this service's .venv/venv, else python3 (scripts/_python.sh).
# Exit codes are the CLI's: 0 ok / ready, 1 failed / not ready (rolled back or not), 2 bad input, 3 busy.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

default_id=${RENDER_GIT_COMMIT:+render-${RENDER_GIT_COMMIT:0:12}}

# A prune or standby publication holds the service lock for a moment: a busy snapshot is retried.
BUSY_RETRIES=${DEPLOY_HOOK_BUSY_RETRIES:-10}
BUSY_SLEEP=${DEPLOY_HOOK_BUSY_SLEEP:-2}

usage() { sed -n 2,14p "$0" >&2; exit 2; }

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

# The code step of a restore on Render starts a rollback (or rebuild) deploy, and Render runs this
# pre-deploy command for it too. A snapshot then would meet the restore's own lock and fail the deploy
# that completes the restore. Render gives the pre-deploy command RENDER_GIT_COMMIT but no deploy id,
# so the deploy is recognised by two facts: Render's deploy in pre_deploy_in_progress is a rollback or
# API deploy of RENDER_GIT_COMMIT (python -m rollback.render restore-deploy), and the worker is running
# a restore's code step (celery inspect active). Both true: no check, no snapshot, exit 0.
restore_deploy() {
  [ "${CODE_ROLLBACK_STRATEGY:-}" = "render" ] && [ -n "${RENDER_GIT_COMMIT:-}" ] || return 1
  local deploy rc=0 active
  deploy=$("$ROLLBACK_PY" -m rollback.render restore-deploy "$RENDER_GIT_COMMIT") || rc=$?
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 1 ] || echo "deploy_hook: could not ask Render which deploy this is; treated as a normal deploy" >&2
    return 1
  fi
  active=$("$ROLLBACK_PY" -m celery -A tasks inspect active --json --timeout "${DEPLOY_HOOK_INSPECT_TIMEOUT:-5}" \
           2>/dev/null) || active=
  case "$active" in
    *'"rollback.restore.code"'*)
      echo "deploy_hook: Render deploy $deploy was started by the code step of a restore in progress:" \
           "no check and no snapshot (the restore holds the service; its pre-restore state is kept)" >&2
      return 0 ;;
  esac
  echo "deploy_hook: Render deploy $deploy is a rollback, but no restore is in its code step: a normal deploy" >&2
  return 1
}

pre() {
  if [ "${DEPLOY_HOOK_SKIP_PRE:-0}" = "1" ]; then
    echo "deploy_hook: DEPLOY_HOOK_SKIP_PRE=1, no snapshot taken" >&2
    return 0
  fi
  if restore_deploy; then
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
