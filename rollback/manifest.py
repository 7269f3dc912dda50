"""BACKUP_DIR/manifest.json: the list of complete snapshots.

The file is only ever replaced atomically (temp file, fsync, rename, fsync dir) under its own
flock, so readers see the old or the new version, never a torn one. A manifest that does not
parse is reported as ManifestCorrupt and is never rewritten (that would lose entries).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import ManifestCorrupt, SnapshotNotFound
from .fsutil import atomic_write_bytes
from .ids import LATEST, SNAPSHOT_ID_RE, validate_snapshot_id

FORMAT = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("id", "created_at", "notes", "app_revision", "alembic_revision", "artifacts", "ready_check")
ARTIFACT_KEYS = ("file", "sha256", "size")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class Manifest:
    def __init__(self, backup_dir: Path):
        self.backup_dir = Path(backup_dir)
        self.path = self.backup_dir / MANIFEST_NAME

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> list[dict]:
        """All snapshots in the order they were taken (oldest first). A missing manifest is empty."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return parse_manifest(raw, self.path)

    def get(self, snapshot_id: str) -> dict:
        validate_snapshot_id(snapshot_id)
        for entry in self.entries():
            if entry["id"] == snapshot_id:
                return entry
        raise SnapshotNotFound(f"snapshot {snapshot_id} not found in {self.path}")

    def resolve(self, ref: str) -> dict:
        """Resolve an id or 'latest' (the newest snapshot) to its entry."""
        ref = validate_snapshot_id(ref, allow_latest=True)
        if ref != LATEST:
            return self.get(ref)
        entries = self.entries()
        if not entries:
            raise SnapshotNotFound(f"no snapshot recorded in {self.path}")
        return entries[-1]

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.backup_dir)
        fd = os.open(self.backup_dir / ".manifest.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def mutate(self, change: Callable[[list[dict]], list[dict]]) -> list[dict]:
        """Read-modify-write under the manifest lock; the write is atomic."""
        with self._locked():
            entries = change(self.entries())
            for entry in entries:
                validate_entry(entry)
            body = json.dumps({"format": FORMAT, "snapshots": entries}, indent=2, ensure_ascii=False) + "\n"
            atomic_write_bytes(self.path, body.encode("utf-8"), mode=0o600)
            return entries

    def add(self, entry: dict) -> None:
        def change(entries: list[dict]) -> list[dict]:
            if any(e["id"] == entry["id"] for e in entries):
                raise ManifestCorrupt(f"snapshot {entry['id']} is already recorded")
            return entries + [entry]

        self.mutate(change)

    def update(self, snapshot_id: str, **fields) -> dict:
        updated: dict = {}

        def change(entries: list[dict]) -> list[dict]:
            for entry in entries:
                if entry["id"] == snapshot_id:
                    entry.update(fields)
                    updated.update(entry)
                    return entries
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found in {self.path}")

        self.mutate(change)
        return updated

    def remove(self, snapshot_ids: set[str]) -> None:
        self.mutate(lambda entries: [e for e in entries if e["id"] not in snapshot_ids])


def parse_manifest(raw: bytes, path: Path) -> list[dict]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestCorrupt(f"{path} is not valid JSON ({exc}); it was left untouched") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("snapshots"), list):
        raise ManifestCorrupt(f"{path}: expected {{'format': {FORMAT}, 'snapshots': [...]}}; it was left untouched")
    entries = doc["snapshots"]
    for entry in entries:
        try:
            validate_entry(entry)
        except ManifestCorrupt as exc:
            raise ManifestCorrupt(f"{path}: {exc}; it was left untouched") from None
    # Order is creation order (appends happen under the service lock); ids only sort to the second.
    return entries


def validate_entry(entry: object) -> None:
    if not isinstance(entry, dict):
        raise ManifestCorrupt("an entry is not an object")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise ManifestCorrupt(f"entry {entry.get('id')!r} lacks {', '.join(missing)}")
    if not isinstance(entry["id"], str) or not SNAPSHOT_ID_RE.fullmatch(entry["id"]):
        raise ManifestCorrupt(f"entry id {entry['id']!r} is malformed")
    artifacts = entry["artifacts"]
    if not isinstance(artifacts, dict) or set(artifacts) != {"db", "data"}:
        raise ManifestCorrupt(f"entry {entry['id']}: artifacts must be exactly db and data")
    for name, art in artifacts.items():
        if not isinstance(art, dict) or any(k not in art for k in ARTIFACT_KEYS):
            raise ManifestCorrupt(f"entry {entry['id']}: artifact {name} lacks file/sha256/size")
        file = art["file"]
        if not isinstance(file, str) or "/" in file or file.startswith(".") or not file:
            raise ManifestCorrupt(f"entry {entry['id']}: artifact {name} has an unsafe file name {file!r}")
        if not isinstance(art["size"], int) or art["size"] < 0:
            raise ManifestCorrupt(f"entry {entry['id']}: artifact {name} has an invalid size")
        if not isinstance(art["sha256"], str) or len(art["sha256"]) != 64:
            raise ManifestCorrupt(f"entry {entry['id']}: artifact {name} has an invalid sha256")
