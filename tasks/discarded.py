"""The discarded-writes report of a successful restore, made in the background once the restore ends.

A signal handler watches the restore's step tasks: when the one that closed the transaction as a
success has run, the report is marked pending and its task sent (deterministic id: one per txn). The
comparison reads both databases and trees in full, so it runs after the restore, never inside it.
"""

from __future__ import annotations

import logging

from celery.signals import task_postrun

from rollback.discarded import build_report, load_summary, mark_pending
from rollback.journal import Journal, is_success
from rollback.settings import Settings

from . import app
from .base import FOLLOW_UP_DELAY_SEC, RESTORE_STEP_TASKS, StateReporter, get_settings

log = logging.getLogger(__name__)


@app.task(bind=True, name="rollback.discarded_report")
def discarded_report(self, txn: str) -> dict:
    """Compare what the restore `txn` replaced with what it restored; returns the report's summary."""
    return build_report(get_settings(), txn, progress=StateReporter(self, txn))


def enqueue_report(settings: Settings, txn: str, countdown: float = 0):
    """Mark the report pending, then send its task (to start `countdown` seconds later); returns the AsyncResult."""
    mark_pending(settings, txn)
    return discarded_report.apply_async((txn,), task_id=f"discarded-{txn}", countdown=countdown)


@task_postrun.connect
def _report_once_a_restore_succeeds(sender=None, args=None, kwargs=None, **_) -> None:
    if getattr(sender, "name", None) not in RESTORE_STEP_TASKS:
        return
    txn = (args or [None])[0] or (kwargs or {}).get("txn")
    try:
        settings = get_settings()
        doc = Journal(settings.backup_dir).load(txn)
        if is_success(doc["status"]) and load_summary(settings, txn) is None:
            enqueue_report(settings, txn, countdown=FOLLOW_UP_DELAY_SEC)
    except Exception as exc:  # the restore's own outcome is recorded already; never fail it from here
        log.warning("no discarded-writes report for %s (%s: %s)", txn, type(exc).__name__, exc)
