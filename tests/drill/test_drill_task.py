"""The scheduled drill on a real (in-process) Celery worker: beat's entry, and the task drilling every
snapshot never drilled, newest first."""

from __future__ import annotations

import importlib

import celeryconfig
from rollback.manifest import Manifest
from rollback.snapshot import create_snapshot
from tasks.drill import drill


def test_beat_drills_every_new_snapshot_on_its_schedule(celery_worker, worker_settings, monkeypatch):
    older = create_snapshot(worker_settings, notes="older")
    newer = create_snapshot(worker_settings, notes="newer")

    out = drill.delay().get(timeout=120)

    assert out["stopped"] is None
    assert [d["snapshot_id"] for d in out["drills"]] == [newer["id"], older["id"]]
    assert all(d["ok"] and d["rto_sec"] > 0 for d in out["drills"])
    entries = {e["id"]: e for e in Manifest.for_settings(worker_settings).entries()}
    assert entries[older["id"]]["drill"]["ok"] and entries[newer["id"]]["drill"]["ok"]

    # beat's entry: daily by default, the schedule as configured, none with `off`.
    try:
        assert celeryconfig.beat_schedule["rollback-drill"]["task"] == "rollback.drill"
        monkeypatch.setenv("ROLLBACK_DRILL_SCHEDULE", "*/5 * * * *")
        assert str(importlib.reload(celeryconfig).beat_schedule["rollback-drill"]["schedule"]).startswith("<crontab: */5 *")
        monkeypatch.setenv("ROLLBACK_DRILL_SCHEDULE", "off")
        assert "rollback-drill" not in importlib.reload(celeryconfig).beat_schedule
    finally:
        monkeypatch.delenv("ROLLBACK_DRILL_SCHEDULE")
        importlib.reload(celeryconfig)
