"""What the bucket holds, retention of it, and finding a snapshot that only the bucket still has.

Remote retention (BACKUP_REMOTE_RETENTION, run by beat) keeps the newest N complete snapshots, the
newest ready one, and the one a restore is using; a deleted snapshot loses its record first (it stops
being visible), then its objects. Objects of uploads that never completed (no record) are removed once
they are older than ORPHAN_AGE, so an upload running now is never touched.
"""

from __future__ import annotations

from datetime import timedelta

from .. import logbook
from ..errors import ManifestCorrupt, RollbackError, SnapshotNotFound
from ..ids import LATEST, validate_snapshot_id
from ..lock import ServiceLock
from ..manifest import Manifest
from ..settings import Settings
from ..space import age_sec
from . import state
from .store import RECORD_NAME, RemoteStore, utc_now
from .transfer import open_record

ORPHAN_AGE = timedelta(hours=24)
STALE_SEC = 600.0


def remote_snapshots(settings: Settings, store: RemoteStore | None = None) -> list[dict]:
    """Complete remote snapshots, oldest first: {"id", "created_at", "uploaded_at", "bytes", "encrypted",
    "local", "entry" (None when sealed and no key here), "error"}."""
    store = store or RemoteStore(settings)
    local = {e["id"]: n for n, e in enumerate(_local_entries(settings))}  # creation order where known
    rows = []
    for snapshot_id, objects in store.objects().items():
        if not any(o["name"] == RECORD_NAME for o in objects):
            continue  # incomplete: invisible until its record is written
        record = store.get_json(store.key(snapshot_id, RECORD_NAME)) or {}
        entry, error = None, None
        try:
            entry = open_record(settings, record)
        except RollbackError as exc:
            error = str(exc)
        rows.append({"id": snapshot_id, "created_at": record.get("created_at"),
                     "uploaded_at": record.get("uploaded_at"),
                     "bytes": sum(o["size"] for o in objects if o["name"] != RECORD_NAME),
                     "encrypted": bool(record.get("encryption")), "local": snapshot_id in local,
                     "entry": entry, "error": error})
    # Ids and times count seconds only: within one second the local manifest's order decides.
    return sorted(rows, key=lambda r: (r["created_at"] or "", local.get(r["id"], len(local)), r["id"]))


def resolve_remote(settings: Settings, ref: str) -> dict:
    """The entry of a remote snapshot by id or 'latest' (the newest complete one)."""
    ref = validate_snapshot_id(ref, allow_latest=True)
    rows = remote_snapshots(settings)
    if ref != LATEST:
        rows = [r for r in rows if r["id"] == ref]
    if not rows:
        raise SnapshotNotFound(f"snapshot {ref} is not in {settings.remote_url}" if ref != LATEST
                               else f"no complete snapshot in {settings.remote_url}")
    row = rows[-1]
    if row["entry"] is None:
        raise RollbackError(f"remote snapshot {row['id']}: {row['error']}")
    return row["entry"]


def resolve_anywhere(settings: Settings, ref: str) -> dict:
    """A snapshot from the local manifest; failing that (BACKUP_DIR lost or pruned), from the bucket,
    recorded in the local manifest so that the restore's preflight fetches its artifacts."""
    manifest = Manifest.for_settings(settings)
    try:
        return manifest.resolve(ref)
    except SnapshotNotFound:
        if not settings.remote_url:
            raise
    entry = resolve_remote(settings, ref)
    try:
        manifest.add(entry)
    except ManifestCorrupt:
        pass  # recorded meanwhile (another restore of it): the manifest has it, which is all we need
    state.write_state(settings, entry["id"], state.OK, at=None, url=RemoteStore(settings).where(entry["id"]))
    logbook.append(settings.rollback_log, logbook.format_event("remote adopt", id=entry["id"]))
    return entry


def prune_remote(settings: Settings) -> dict:
    """Apply BACKUP_REMOTE_RETENTION to the bucket; returns {"removed", "kept", "orphans_removed", "aborted"}."""
    store = RemoteStore(settings)
    rows = remote_snapshots(settings, store)
    keep_ids = {r["id"] for r in rows[-settings.remote_retention:]}
    local = {e["id"]: e for e in _local_entries(settings)}
    ready = [r for r in rows if _ready(local.get(r["id"]) or r["entry"] or {})]
    if ready:
        keep_ids.add(ready[-1]["id"])
    active = ServiceLock(settings.backup_dir).active() or {}
    if active.get("snapshot_id"):
        keep_ids.add(active["snapshot_id"])
    objects = store.objects()
    doomed = [r["id"] for r in rows if r["id"] not in keep_ids]
    for snapshot_id in doomed:
        store.delete([store.key(snapshot_id, RECORD_NAME)])  # invisible first
        store.delete([o["key"] for o in objects.get(snapshot_id, []) if o["name"] != RECORD_NAME])
    complete = {r["id"] for r in rows}
    cutoff = utc_now() - ORPHAN_AGE
    orphans = [sid for sid, objs in objects.items()
               if sid not in complete and all(o["modified"] < cutoff for o in objs)]
    for snapshot_id in orphans:
        store.delete([o["key"] for o in objects[snapshot_id]])
    aborted = store.abort_stale_multipart(cutoff)
    kept = [r["id"] for r in rows if r["id"] not in doomed]
    state.forget_states(settings, set(kept) | set(local))
    logbook.append(settings.rollback_log, logbook.format_event(
        "remote prune", removed=",".join(doomed) or "none", kept=len(kept), orphans=len(orphans), aborted=aborted))
    return {"removed": doomed, "kept": kept, "orphans_removed": orphans, "aborted": aborted}


def _ready(entry: dict) -> bool:
    """Ready as the local manifest knows it now (the ready check lands after the upload), else as uploaded."""
    return (entry.get("ready_check") or {}).get("status") == "ok"


def _local_entries(settings: Settings) -> list[dict]:
    try:
        return Manifest.for_settings(settings).entries()
    except RollbackError:
        return []


def needing_upload(settings: Settings) -> list[str]:
    """Local snapshots the bucket should get: failed for good (beat's sync retries them), pending or
    uploading with no news for ten minutes (never sent, or its worker died), or pending from before
    BACKUP_REMOTE_URL was set. Not one whose upload may be running: two uploads of one snapshot
    would overwrite each other's objects."""
    ids = []
    for entry in _local_entries(settings):
        doc = state.read_state(settings, entry["id"])
        quiet = age_sec(doc.get("updated_at")) > STALE_SEC
        if (doc["state"] == state.FAILED and doc.get("final")) or (
                doc["state"] in (state.PENDING, state.UPLOADING) and quiet):
            ids.append(entry["id"])
    return ids
