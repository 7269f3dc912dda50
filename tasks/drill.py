"""Restore drills on the worker: `rollback.drill` drills one snapshot, or (as beat sends it, on
ROLLBACK_DRILL_SCHEDULE) every snapshot never drilled, newest first, or the newest again when all were."""

from __future__ import annotations

import logging

from rollback.drill import DrillAbandoned, run_drill, snapshots_to_drill
from rollback.errors import LockHeld, SnapshotNotFound

from . import app
from .base import StateReporter, get_settings

log = logging.getLogger(__name__)


@app.task(bind=True, name="rollback.drill")
def drill(self, snapshot_id: str | None = None) -> dict:
    """{"drills": [result...], "stopped": why or None}; a restore or snapshot stops the run (the
    remaining snapshots wait for the next one)."""
    settings = get_settings()
    results, stopped = [], None
    for sid in [snapshot_id] if snapshot_id else snapshots_to_drill(settings):
        try:
            result = run_drill(settings, sid, progress=StateReporter(self))
        except SnapshotNotFound as exc:  # pruned since the list was read
            log.info("drill of %s skipped: %s", sid, exc)
            continue
        except (DrillAbandoned, LockHeld) as exc:
            stopped = str(exc)
            log.info("drills stopped: %s", exc)
            break
        results.append({k: result[k] for k in ("snapshot_id", "ok", "rto_sec", "phases", "error")})
    return {"drills": results, "stopped": stopped}
