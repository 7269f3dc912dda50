"""Retention: keep the newest BACKUP_RETENTION snapshots, the newest ready one, and any in use."""

from __future__ import annotations

import shutil

from . import logbook, standby
from .fsutil import fsync_dir
from .lock import ServiceLock
from .manifest import Manifest
from .settings import Settings
from .snapshot import clean_leftovers


def choose_prunable(entries: list[dict], keep: int, in_use: set[str]) -> list[str]:
    """Ids to delete: older than the newest `keep`, except the newest ready snapshot and those in use."""
    ordered = list(entries)  # manifest order is creation order
    protected = {e["id"] for e in (ordered[-keep:] if keep else [])} | set(in_use)
    ready = [e for e in ordered if (e.get("ready_check") or {}).get("status") == "ok"]
    if ready:
        protected.add(ready[-1]["id"])
    return [e["id"] for e in ordered if e["id"] not in protected]


def prune(settings: Settings) -> dict:
    """Apply retention under the service lock; the manifest is updated before folders are deleted."""
    manifest = Manifest.for_settings(settings)
    lock = ServiceLock(settings.backup_dir)
    with lock.held({"kind": "prune"}, wait_sec=5):
        active = lock.active() or {}
        in_use = {active["snapshot_id"]} if active.get("snapshot_id") else set()
        doomed = choose_prunable(manifest.entries(), settings.backup_retention, in_use)
        if doomed:
            # Manifest first: a crash in between leaves unrecorded folders, which clean_leftovers removes.
            manifest.remove(set(doomed))
            if (standby.read_record(settings) or {}).get("snapshot_id") in doomed:
                standby.discard_standby(settings)
            for snapshot_id in doomed:
                shutil.rmtree(settings.backup_dir / snapshot_id, ignore_errors=True)
            fsync_dir(settings.backup_dir)
        leftovers = clean_leftovers(settings, manifest) if not active else []
        kept = [e["id"] for e in manifest.entries()]
    logbook.append(settings.rollback_log, logbook.format_event(
        "prune", removed=",".join(doomed) or "none", kept=len(kept)))
    return {"removed": doomed, "kept": kept, "leftovers_removed": leftovers}
