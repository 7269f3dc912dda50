"""Snapshot task."""

from __future__ import annotations

from rollback.snapshot import create_snapshot

from . import app
from .base import StateReporter, get_settings


@app.task(bind=True, name="rollback.snapshot")
def take_snapshot(self, notes: str = "") -> dict:
    """Take a snapshot; returns its manifest entry."""
    return create_snapshot(get_settings(), notes=notes, progress=StateReporter(self))
