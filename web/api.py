"""The HTTP API for deploy pipelines and chat-ops: Bearer token, JSON in and out, under /admin/rollback/api.

The address allowlist (app-wide guard) runs first, then the per-address rate limit, then the token.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from rollback.errors import LockHeld, RollbackError
from rollback.ids import validate_snapshot_id
from rollback.manifest import Manifest
from rollback.remote import with_remote_state

from .access import audit, bearer_token_valid, client_address
from .context import API_PREFIX, error_response, web_context
from .errors import BadRequest
from .jobs import TASK_ID_RE, start_restore, start_snapshot, task_state
from .progress import history, restore_status

api = Blueprint("rollback_api", __name__, url_prefix=API_PREFIX)

RATE_WINDOW_SEC = 60
MAX_REASON = 500
MAX_NOTES = 500
WHO = "api"
DEFAULT_REASON = "api"  # the runbook's curl sends only {"snapshot_id": ...}


@api.before_request
def authenticate():
    ctx = web_context()
    address = client_address()
    if ctx.store.hit(f"api:{address}", RATE_WINDOW_SEC) > ctx.config.api_rate_limit_per_min:
        return error_response(429, f"too many requests from {address}: at most "
                                   f"{ctx.config.api_rate_limit_per_min} per minute (ROLLBACK_API_RATE_LIMIT)",
                              headers={"Retry-After": str(RATE_WINDOW_SEC)})
    if not ctx.config.api_token:
        return error_response(503, "the API is disabled: set ROLLBACK_API_TOKEN")
    if not bearer_token_valid(ctx.config, request.headers.get("Authorization")):
        audit(ctx.settings, "api", "unauthorized", who=WHO, path=request.path)
        return error_response(401, "missing or wrong Bearer token", headers={"WWW-Authenticate": "Bearer"})
    return None


@api.post("/restore")
def restore():
    ctx = web_context()
    body = _json_object()
    ref = validate_snapshot_id(body.get("snapshot_id"), allow_latest=True)
    # No reason → "api"; a reason that is sent must say something.
    reason = _text(body, "reason", MAX_REASON, required=True) if body.get("reason") is not None else DEFAULT_REASON
    try:
        doc, task_id = start_restore(ctx.settings, ref, reason, requested_by=f"{WHO}@{client_address()}")
    except RollbackError as exc:
        audit(ctx.settings, "restore", "refused" if isinstance(exc, LockHeld) else "failed", who=WHO,
              snapshot=ref, error=str(exc))
        raise
    audit(ctx.settings, "restore", "queued", who=WHO, txn=doc["txn"], snapshot=doc["snapshot_id"], reason=reason)
    status_url = url_for(".restore_state", txn=doc["txn"])
    return jsonify(txn=doc["txn"], task_id=task_id, status_url=status_url), 202, {"Location": status_url}


@api.get("/restore/<txn>")
def restore_state(txn: str):
    return jsonify(restore_status(web_context().settings, txn))


@api.get("/restores")
def restores():
    return jsonify(restores=history(web_context().settings))


@api.get("/snapshots")
def snapshots():
    settings = web_context().settings
    entries = with_remote_state(settings, list(reversed(Manifest.for_settings(settings).entries())))
    # `drill` is always present: null until the snapshot was drilled (python -m manage.rollback drill)
    return jsonify(snapshots=[dict(e, drill=e.get("drill")) for e in entries])


@api.post("/snapshot")
def snapshot():
    ctx = web_context()
    body = _json_object(allow_empty=True)
    notes = _text(body, "notes", MAX_NOTES, required=False)
    try:
        task_id = start_snapshot(ctx.settings, ctx.store, notes)
    except RollbackError as exc:
        audit(ctx.settings, "snapshot", "refused" if isinstance(exc, LockHeld) else "failed", who=WHO,
              error=str(exc))
        raise
    audit(ctx.settings, "snapshot", "queued", who=WHO, task=task_id)
    status_url = url_for(".snapshot_state", task_id=task_id)
    return jsonify(task_id=task_id, status_url=status_url), 202, {"Location": status_url}


@api.get("/snapshot/<task_id>")
def snapshot_state(task_id: str):
    if not TASK_ID_RE.fullmatch(task_id):
        raise BadRequest(f"invalid task id {task_id[:80]!r}")
    return jsonify(task_state(web_context().settings, task_id))


def _json_object(allow_empty: bool = False) -> dict:
    if allow_empty and not request.get_data():
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _text(body: dict, key: str, limit: int, required: bool) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{key} must be a string of at most {limit} characters")
    if required and not value.strip():
        raise BadRequest(f"{key} is required")
    return value.strip()
