"""Canary task: one readiness probe per run, re-scheduled with a countdown until there is a verdict.

Between probes the task is a message waiting for its ETA, not a worker slot: a worker with one
slot can run the canary and the automatic restore it asks for. The task id stays the same across
its re-runs (Celery's retry), so a follower reads progress from the RETRY state and the verdict
from the result.
"""

from __future__ import annotations

import logging

from celery.signals import worker_ready

from rollback import canary
from rollback.errors import RollbackError
from rollback.settings import Settings

from . import app
from .base import get_settings

log = logging.getLogger("rollback")


class CanaryPending(Exception):
    """Why the canary was re-scheduled (shown to followers); not a failure."""


@app.task(bind=True, name="rollback.canary", max_retries=None)
def watch_deploy(self, deploy_id: str, snapshot: str | None = None) -> dict:
    """Advance the canary of `deploy_id`; returns its verdict or re-schedules itself."""
    outcome = canary.tick(get_settings(), deploy_id, snapshot, run_id=self.request.id or deploy_id,
                          start_restore=start_automatic_restore)
    if outcome.verdict is None:
        raise self.retry(countdown=outcome.wait, exc=CanaryPending(outcome.message))
    return outcome.verdict


def start_automatic_restore(settings: Settings, snapshot_id: str) -> dict:
    """The canary's rollback: restore the snapshot taken before the deploy, through the worker."""
    from .restore import enqueue_restore

    try:
        doc, _ = enqueue_restore(snapshot_id, reason="readyz_fail", auto=True, requested_by="canary",
                                 settings=settings)
    except RollbackError:
        raise
    except Exception as exc:  # the broker refused the canvas; enqueue_restore already failed the txn
        raise RollbackError(f"could not enqueue the restore: {exc}") from None
    return doc


def enqueue_canary(deploy_id: str, snapshot: str | None = None):
    """Send the canary of `deploy_id` to the worker; returns its AsyncResult."""
    canary.validate_deploy_id(deploy_id)
    return watch_deploy.apply_async(kwargs={"deploy_id": deploy_id, "snapshot": snapshot})


@worker_ready.connect
def resume_stale_canaries(sender=None, **_):
    """A canary whose worker died waits in Redis as an unacknowledged ETA message until the visibility
    timeout (hours): resume it now, under its own task id, so its followers keep following."""
    try:
        stale = canary.stale_canaries(get_settings())
    except RollbackError as exc:
        log.error("canary resume skipped: %s", exc)
        return
    for rec in stale:
        log.warning("resuming the canary of deploy %s (task %s)", rec["deploy_id"], rec["run_id"])
        watch_deploy.apply_async(kwargs={"deploy_id": rec["deploy_id"], "snapshot": None}, task_id=rec["run_id"])
