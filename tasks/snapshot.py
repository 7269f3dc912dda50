"""Snapshot task, the configuration check run before it, and the warm standby prepared after it."""

from __future__ import annotations

from rollback.check import run_checks
from rollback.errors import LockHeld
from rollback.snapshot import create_snapshot
from rollback.standby import prepare_standby

from . import app
from .base import StateReporter, get_settings
from .remote import enqueue_upload


@app.task(bind=True, name="rollback.snapshot")
def take_snapshot(self, notes: str = "") -> dict:
    """Take a snapshot; returns its manifest entry. The standby is prepared by a separate task,
    so the snapshot (and the deploy waiting for it) never waits for it."""
    settings = get_settings()
    entry = create_snapshot(settings, notes=notes, progress=StateReporter(self))
    if settings.standby_enabled:
        prepare_standby_task.delay(entry["id"])
    enqueue_upload(entry["id"])  # the off-site copy, also on its own task: never held up by it
    return entry


@app.task(name="rollback.check")
def check_configuration() -> list[dict]:
    """`check` where snapshots and restores run: the deploy hook asks the worker, which owns the disk."""
    return [result.as_dict() for result in run_checks(get_settings())]


@app.task(bind=True, name="rollback.standby.prepare")
def prepare_standby_task(self, snapshot_id: str) -> dict:
    try:
        return prepare_standby(get_settings(), snapshot_id, progress=StateReporter(self))
    except LockHeld as exc:  # another preparation or a restore: the next snapshot prepares again
        return {"skipped": str(exc)}
