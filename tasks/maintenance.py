"""Housekeeping tasks: retention, pre-restore cleanup and verification. Beat schedules the first two
(celeryconfig.beat_schedule)."""

from __future__ import annotations

from rollback.cleanup import clean_pre_restore
from rollback.retention import prune
from rollback.verify import verify_snapshot

from . import app
from .base import StateReporter, get_settings


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
