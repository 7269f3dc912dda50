"""Housekeeping tasks: retention, pre-restore cleanup and verification, including the background
verification after a standby-backed restore. Beat schedules the first two (celeryconfig.beat_schedule)."""

from __future__ import annotations

import logging

# Imported here, in the worker's parent before it forks its pool, so that a child's first preflight
# (which reads the deployed migrations) does not spend a quarter of a second importing Alembic.
import alembic.script  # noqa: F401
from celery.signals import task_postrun

from rollback.cleanup import clean_pre_restore
from rollback.journal import Journal
from rollback.retention import prune
from rollback.verify import needs_verification_after_restore, verify_after_standby_restore, verify_snapshot

from . import app
from .base import FOLLOW_UP_DELAY_SEC, RESTORE_STEP_TASKS, StateReporter, get_settings

log = logging.getLogger(__name__)


@app.task(bind=True, name="rollback.prune")
def prune_snapshots(self) -> dict:
    return prune(get_settings())


@app.task(bind=True, name="rollback.cleanup")
def cleanup_pre_restore(self) -> dict:
    """Remove what finished restores kept for undo: by age (PRE_RETENTION_DAYS) and by count
    (only the PRE_RETENTION_COUNT newest restores keep their database and data-tree copies)."""
    return clean_pre_restore(get_settings())


@app.task(bind=True, name="rollback.verify")
def verify(self, snapshot_id: str) -> dict:
    return verify_snapshot(get_settings(), snapshot_id, progress=StateReporter(self))


@app.task(bind=True, name="rollback.verify_after_restore")
def verify_after_restore(self, snapshot_id: str, txn: str) -> dict:
    """Hash the artifacts of a snapshot restored from its warm standby (its preflight skipped them)."""
    return verify_after_standby_restore(get_settings(), snapshot_id, txn)


@task_postrun.connect
def _verify_once_a_standby_restore_ends(sender=None, args=None, kwargs=None, **_) -> None:
    """When a restore that took the warm standby ends (whichever step ends it, succeeded or failed),
    enqueue the verification of the artifacts it did not read. Here rather than in the preflight, so
    the hashing never competes with the restore's own steps for the worker or the disk."""
    if getattr(sender, "name", None) not in RESTORE_STEP_TASKS:
        return
    txn = (args or [None])[0] or (kwargs or {}).get("txn")
    try:
        doc = Journal(get_settings().backup_dir).load(txn)
    except Exception as exc:  # the step's own outcome is recorded already; never fail it from here
        log.warning("no background verification for %s (%s: %s)", txn, type(exc).__name__, exc)
        return
    if needs_verification_after_restore(doc):
        verify_after_restore.apply_async((doc["snapshot_id"], txn), task_id=f"verify-{txn}-{doc.get('attempt', 1)}",
                                         countdown=FOLLOW_UP_DELAY_SEC)
