"""Housekeeping tasks: retention and verification."""

from __future__ import annotations

from rollback.retention import prune
from rollback.verify import verify_snapshot

from . import app
from .base import StateReporter, get_settings


@app.task(bind=True, name="rollback.prune")
def prune_snapshots(self) -> dict:
    return prune(get_settings())


@app.task(bind=True, name="rollback.verify")
def verify(self, snapshot_id: str) -> dict:
    report = StateReporter(self)
    return verify_snapshot(get_settings(), snapshot_id, progress=lambda d, t, m: report("verify", d, t, m))
