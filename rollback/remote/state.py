"""Each snapshot's remote state, in a side file per snapshot: BACKUP_DIR/.remote/<id>.json.

Why a side file and not the manifest: the upload reports its progress every second or so, and the
manifest is the one signed file every reader parses and every restore rewrites; those writes must
not contend with it (nor re-sign it with MANIFEST_HMAC_KEY) a hundred times per upload. The state is
also a cache of a fact held by the bucket (`list --remote` asks the bucket itself), so losing it
loses nothing: a snapshot without a state file shows `pending` and beat's sync uploads it again
(the upload is a no-op when the bucket already holds the complete snapshot).

States: pending · uploading (done/total bytes, percent, attempt) · ok (at, url) · failed (error,
attempt, final, next_retry_at); `off` when BACKUP_REMOTE_URL is not set.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fsutil import atomic_write_bytes
from ..ids import SNAPSHOT_ID_RE, utc_now_iso, validate_snapshot_id
from ..manifest import ensure_private_dir
from ..settings import Settings

STATE_DIR = ".remote"
PENDING, UPLOADING, OK, FAILED, OFF = "pending", "uploading", "ok", "failed", "off"


def _path(settings: Settings, snapshot_id: str) -> Path:
    return settings.backup_dir / STATE_DIR / f"{validate_snapshot_id(snapshot_id)}.json"


def read_state(settings: Settings, snapshot_id: str) -> dict:
    if not settings.remote_url:
        return {"state": OFF}
    try:
        doc = json.loads(_path(settings, snapshot_id).read_bytes())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {"state": PENDING}
    return doc if isinstance(doc, dict) and doc.get("state") else {"state": PENDING}


def write_state(settings: Settings, snapshot_id: str, state: str, **fields) -> dict:
    """Replace the state atomically; `updated_at` is added."""
    doc = {"state": state, **fields, "updated_at": utc_now_iso()}
    ensure_private_dir(settings.backup_dir / STATE_DIR)
    atomic_write_bytes(_path(settings, snapshot_id), json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    return doc


def forget_states(settings: Settings, keep: set[str]) -> list[str]:
    """Remove the state files of snapshots in neither the manifest nor the bucket (`keep`)."""
    folder = settings.backup_dir / STATE_DIR
    removed = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if SNAPSHOT_ID_RE.fullmatch(path.stem) and path.stem not in keep:
            path.unlink(missing_ok=True)
            removed.append(path.stem)
    return removed


def with_remote_state(settings: Settings, entries: list[dict]) -> list[dict]:
    """Copies of manifest entries with their `remote` state added, for list --json, show and the console."""
    return [dict(entry, remote=read_state(settings, entry["id"])) for entry in entries]


def describe(state: dict) -> str:
    """A short cell for tables: `ok`, `uploading 42%`, `failed`, `pending`, `off`."""
    name = state.get("state", PENDING)
    if name == UPLOADING:
        return f"uploading {state.get('percent', 0)}%"
    if name == FAILED and not state.get("final"):
        return "failed (retrying)"
    return name
