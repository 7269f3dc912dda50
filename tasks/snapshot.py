"""Snapshot task, the configuration check run before it, and what follows it in the background: the
index of its data archive and the warm standby."""

from __future__ import annotations

from rollback.check import run_checks
from rollback.errors import LockHeld
from rollback.snapshot import create_snapshot
from rollback.standby import prepare_standby
from rollback.verify import index_after_snapshot

from . import app
from .base import StateReporter, get_settings
from .remote import enqueue_upload


@app.task(bind=True, name="rollback.snapshot")
def take_snapshot(self, notes: str = "") -> dict:
    """Take a snapshot; returns its manifest entry. The archive's index and the standby are separate
    tasks, so the snapshot (and the deploy waiting for it) never waits for them."""
    settings = get_settings()
    entry = create_snapshot(settings, notes=notes, progress=StateReporter(self))
    index_snapshot_task.delay(entry["id"], prepare_standby_after=settings.standby_enabled)
    enqueue_upload(entry["id"])  # the off-site copy, also on its own task: never held up by it
    return entry


@app.task(name="rollback.check")
def check_configuration() -> list[dict]:
    """`check` where snapshots and restores run: the deploy hook asks the worker, which owns the disk."""
    return [result.as_dict() for result in run_checks(get_settings())]


@app.task(name="rollback.snapshot.index")
def index_snapshot_task(snapshot_id: str, prepare_standby_after: bool = False) -> dict:
    """Index the new snapshot's archive, then hand over to the standby's preparation: one after the other,
    so the work that follows a snapshot takes one worker process and a restore always finds another."""
    try:
        return index_after_snapshot(get_settings(), snapshot_id)
    finally:
        if prepare_standby_after:
            prepare_standby_task.delay(snapshot_id)


@app.task(bind=True, name="rollback.standby.prepare")
def prepare_standby_task(self, snapshot_id: str) -> dict:
    try:
        return prepare_standby(get_settings(), snapshot_id, progress=StateReporter(self))
    except LockHeld as exc:  # another preparation or a restore: the next snapshot prepares again
        return {"skipped": str(exc)}
