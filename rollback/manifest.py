"""BACKUP_DIR/manifest.json: the list of complete snapshots.

The file is only ever replaced atomically (temp file, fsync, rename, fsync dir) under its own
flock, so readers see the old or the new version, never a torn one. A manifest that does not
parse is reported as ManifestCorrupt and is never rewritten (that would lose entries).

Tampering, not only accidents: with MANIFEST_HMAC_KEY set (kept outside BACKUP_DIR: whoever can
write BACKUP_DIR must not be able to re-sign), every write adds `"hmac": "sha256:<hex>"`, an
HMAC-SHA256 over the canonical JSON of the format and the entries, and every read checks it. A
missing or wrong HMAC is ManifestCorrupt, and the file is left untouched. The key is passed
explicitly: `Manifest.for_settings(settings)` (or `Manifest(backup_dir, hmac_key=...)`). Enabling the
key on an existing, unsigned manifest: check it, then `python -m manage.manifest sign`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError, ManifestCorrupt, RollbackError, SnapshotNotFound
from .fsutil import atomic_write_bytes
from .ids import LATEST, SNAPSHOT_ID_RE, validate_snapshot_id

FORMAT = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("id", "created_at", "notes", "app_revision", "alembic_revision", "artifacts", "ready_check")
ARTIFACT_KEYS = ("file", "sha256", "size")
HMAC_FIELD = "hmac"
HMAC_PREFIX = "sha256:"
MIN_HMAC_KEY = 16

def _key_bytes(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_HMAC_KEY:
        raise ConfigError(f"MANIFEST_HMAC_KEY: must be at least {MIN_HMAC_KEY} bytes "
                          f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return raw


def manifest_mac(key: bytes, entries: list[dict]) -> str:
    """HMAC-SHA256 over the canonical JSON of the manifest's content (not its layout)."""
    canonical = json.dumps({"format": FORMAT, "snapshots": entries}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode("utf-8")
    return HMAC_PREFIX + hmac.new(key, canonical, hashlib.sha256).hexdigest()


def ensure_private_dir(path: Path) -> Path:
    """Create `path` if needed and make it 0700, with every parent this creates (0700 whatever the umask)."""
    missing, probe = [], Path(path)
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o700)
    os.chmod(path, 0o700)
    return path


class Manifest:
    def __init__(self, backup_dir: Path, hmac_key: str | bytes | None = None):
        self.backup_dir = Path(backup_dir)
        self.path = self.backup_dir / MANIFEST_NAME
        self.hmac_key: bytes | None = _key_bytes(hmac_key) if hmac_key is not None else None

    @classmethod
    def for_settings(cls, settings) -> "Manifest":
        """The manifest of settings.backup_dir, signed and checked with settings.manifest_hmac_key when set."""
        return cls(settings.backup_dir, hmac_key=settings.manifest_hmac_key)

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> list[dict]:
        """All snapshots in the order they were taken (oldest first). A missing manifest is empty."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return parse_manifest(raw, self.path, self.hmac_key)

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
            if self.hmac_key is None:
                self._refuse_unsigned_rewrite()
            entries = change(self.entries())
            for entry in entries:
                validate_entry(entry)
            self._write(entries)
            return entries

    def _write(self, entries: list[dict]) -> None:
        doc: dict = {"format": FORMAT, "snapshots": entries}
        if self.hmac_key is not None:
            doc[HMAC_FIELD] = manifest_mac(self.hmac_key, entries)
        body = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        try:
            atomic_write_bytes(self.path, body.encode("utf-8"), mode=0o600)
        except OSError as exc:  # ENOSPC, EROFS, EIO ...: a one-line operator error; the old file stays
            raise RollbackError(f"cannot write {self.path}: {exc.strerror or exc}; the previous version was "
                                f"kept") from None

    def _refuse_unsigned_rewrite(self) -> None:
        """A process without the key must not silently drop the signature of a signed manifest."""
        try:
            doc = json.loads(self.path.read_bytes().decode("utf-8"))
        except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
            return  # absent, or reported as corrupt by entries() just after
        if isinstance(doc, dict) and HMAC_FIELD in doc:
            raise ConfigError(f"{self.path} is signed (HMAC) but MANIFEST_HMAC_KEY is not set in this process; "
                              f"refusing to rewrite it unsigned")

    def sign(self) -> list[dict]:
        """Add the HMAC to an unsigned manifest (after enabling MANIFEST_HMAC_KEY); entries are kept as they are."""
        if self.hmac_key is None:
            raise ConfigError("MANIFEST_HMAC_KEY: not set; nothing to sign with")
        with self._locked():
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                raw = json.dumps({"format": FORMAT, "snapshots": []}).encode()
            entries = parse_manifest(raw, self.path, None)
            self._write(entries)
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


def parse_manifest(raw: bytes, path: Path, hmac_key: bytes | None = None) -> list[dict]:
    """The entries of a manifest file's bytes; ManifestCorrupt when it does not parse, validate or
    (with a key) carry the right HMAC."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestCorrupt(f"{path} is not valid JSON ({exc}); it was left untouched") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("snapshots"), list):
        raise ManifestCorrupt(f"{path}: expected {{'format': {FORMAT}, 'snapshots': [...]}}; it was left untouched")
    if set(doc) - {"format", "snapshots", HMAC_FIELD}:
        raise ManifestCorrupt(f"{path}: unexpected top-level keys {sorted(set(doc) - {'format', 'snapshots', HMAC_FIELD})}; "
                              f"it was left untouched")
    entries = doc["snapshots"]
    if hmac_key is not None:
        _check_mac(doc, entries, hmac_key, path)
    for entry in entries:
        try:
            validate_entry(entry)
        except ManifestCorrupt as exc:
            raise ManifestCorrupt(f"{path}: {exc}; it was left untouched") from None
    # Order is creation order (appends happen under the service lock); ids only sort to the second.
    return entries


def _check_mac(doc: dict, entries: list, key: bytes, path: Path) -> None:
    recorded = doc.get(HMAC_FIELD)
    if recorded is None:
        raise ManifestCorrupt(f"{path} carries no HMAC but MANIFEST_HMAC_KEY is set: it was written without the key "
                              f"or the HMAC was removed; it was left untouched (after checking it, sign it with "
                              f"`python -m manage.manifest sign`)")
    try:
        expected = manifest_mac(key, entries)
    except (TypeError, ValueError):
        expected = ""
    if not isinstance(recorded, str) or not hmac.compare_digest(recorded.encode(), expected.encode()):
        raise ManifestCorrupt(f"{path}: HMAC mismatch: the manifest was changed outside this tool, or "
                              f"MANIFEST_HMAC_KEY differs from the key that wrote it; it was left untouched")


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
