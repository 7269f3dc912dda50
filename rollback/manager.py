"""The entry points the runbook names, for callers that run in-process (no broker)."""

from __future__ import annotations

import contextlib

from . import logbook
from .errors import LockHeld, RollbackError
from .restore import run_restore_local
from .settings import Settings
from .verify import needs_verification_after_restore, verify_after_standby_restore


def restore_latest_backup(reason: str, auto: bool = False, settings: Settings | None = None,
                          requested_by: str = "manager") -> dict:
    """Restore the newest snapshot in this process (the runbook's
    `manager.restore_latest_backup(reason="readyz_fail", auto=True)`); returns the finished journal.

    Raises SnapshotNotFound when there is no snapshot, LockHeld when another restore or snapshot
    runs, StepFailed when a step failed (the journal then says `failed` and what was put back).
    `requested_by` goes to the journal, the ROLLBACK log line and an AUDIT line.
    """
    settings = settings or Settings.from_env()
    outcome, details = "failed", {"reason": reason, "auto": str(bool(auto)).lower(), "by": requested_by}
    try:
        doc = run_restore_local(settings, "latest", reason=reason, auto=auto, requested_by=requested_by)
        if needs_verification_after_restore(doc):  # the warm preflight did not hash the artifacts: now
            verify_after_standby_restore(settings, doc["snapshot_id"], doc["txn"])
        outcome = "ok"
        details.update(txn=doc["txn"], snapshot=doc["snapshot_id"], status=doc["status"])
        return doc
    except RollbackError as exc:
        outcome = "refused" if isinstance(exc, LockHeld) else "failed"
        details["error"] = str(exc)[:300]
        raise
    finally:
        with contextlib.suppress(OSError):  # the audit line must not turn a finished restore into an error
            logbook.audit(settings.rollback_log, logbook.local_operator(), "local", "restore", outcome, **details)
