"""CLI for off-site copies: `list --remote` (what the bucket holds) and `pull ID` (fetch a remote snapshot
into BACKUP_DIR, verified), plus the remote column of `list`."""

from __future__ import annotations

import argparse
import json

from rollback import remote
from rollback.errors import ConfigError, LockHeld, SnapshotNotFound
from rollback.ids import validate_snapshot_id
from rollback.lock import ServiceLock, describe_holder
from rollback.manifest import Manifest
from rollback.progress import Progress
from rollback.settings import Settings

from .exit_codes import EXIT_OK


def add_parser(sub) -> None:
    s = sub.add_parser("pull", help="download a snapshot from the bucket (BACKUP_REMOTE_URL) into BACKUP_DIR and "
                                    "verify it")
    s.add_argument("snapshot_id", help="an id or 'latest' (the newest complete snapshot in the bucket)")
    s.add_argument("--json", action="store_true", help="print the fetched manifest entry as JSON")


def add_list_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", action="store_true",
                        help="list what the bucket holds (also snapshots this machine no longer has)")


def _require_remote(settings: Settings) -> None:
    if not settings.remote_url:
        raise ConfigError("BACKUP_REMOTE_URL: not set; there is no bucket to read (e.g. s3://bucket/prefix)")


def cmd_pull(settings: Settings, args, out) -> int:
    _require_remote(settings)
    ref = validate_snapshot_id(args.snapshot_id, allow_latest=True)
    snapshot_id = remote.resolve_remote(settings, ref)["id"]
    args.snapshot = snapshot_id  # for the AUDIT line
    lock = ServiceLock(settings.backup_dir)
    # Snapshot and prune remove unfinished folders under this lock: the fetch's own must not be one of them.
    with lock.held({"kind": "pull", "snapshot_id": snapshot_id}, wait_sec=10):
        active = lock.active()
        if active and active.get("snapshot_id") == snapshot_id:
            raise LockHeld(f"refused: {describe_holder(active)} uses {snapshot_id}", active)
        entry = remote.fetch_snapshot(settings, snapshot_id, Progress(out).scoped("pull"))
    if args.json:
        print(json.dumps(entry, indent=2, ensure_ascii=False))
    else:
        size = sum(a["size"] for a in entry["artifacts"].values())
        print(f"snapshot {snapshot_id} pulled from {settings.remote_url} into {settings.backup_dir / snapshot_id}: "
              f"{size} bytes, SHA-256 verified")
    return EXIT_OK


def list_remote(settings: Settings, args, out) -> int:
    _require_remote(settings)
    rows = list(reversed(remote.remote_snapshots(settings)))
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    if not rows:
        print(f"no complete snapshot in {settings.remote_url}")
        return EXIT_OK
    print(f"{'ID':<24} {'CREATED':<21} {'UPLOADED':<21} {'BYTES':>12} {'LOCAL':<5} {'ENC':<3} NOTES")
    for r in rows:
        notes = (r["entry"] or {}).get("notes", "") if r["entry"] else f"({r['error']})"
        print(f"{r['id']:<24} {r['created_at'] or '-':<21} {r['uploaded_at'] or '-':<21} {r['bytes']:>12} "
              f"{'yes' if r['local'] else 'no':<5} {'yes' if r['encrypted'] else 'no':<3} {notes}")
    return EXIT_OK


def with_state(settings: Settings, entries: list[dict]) -> list[dict]:
    """Manifest entries with their `remote` state, for list --json and show."""
    return remote.with_remote_state(settings, entries)


def state_cell(entry: dict) -> str:
    return remote.describe(entry.get("remote") or {})


def resolve_anywhere(settings: Settings, ref: str) -> dict:
    """The snapshot to restore: the local manifest's, else the bucket's (recorded locally; the restore's
    preflight fetches its artifacts). The bucket is asked only when the manifest lacks it."""
    try:
        return Manifest.for_settings(settings).resolve(ref)
    except SnapshotNotFound:
        if not settings.remote_url:
            raise
    return remote.resolve_anywhere(settings, ref)
