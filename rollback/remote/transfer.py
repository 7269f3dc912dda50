"""Upload a snapshot to the bucket and fetch one back, SHA-256 checked at both ends.

Upload: each artifact is streamed (encrypted on the way when BACKUP_ENCRYPTION_KEY is set) while the
plaintext is hashed and compared with the manifest's SHA-256 (a local file that changed is never
published); then every object is read back and checked (decrypted, its plaintext SHA-256 against
the manifest's, its stored bytes against what was sent), and only then is the record written: a
snapshot is visible remotely only once complete and proven readable.

Fetch: the record is read, every artifact downloaded into BACKUP_DIR/.tmp-fetch-<id> through the
same checks, and the folder renamed into place only when all of it matched; a corrupted remote
object is refused and the local state is left as it was.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import threading
import time

from .. import __version__, logbook
from ..crypto import ALGORITHM, DecryptingWriter, EncryptingReader
from ..keys import key_id
from ..errors import ConfigError, IntegrityError, RollbackError, SnapshotNotFound
from ..fsutil import HashingWriter, atomic_write_bytes, fsync_dir, open_private
from ..ids import utc_now_iso
from ..manifest import Manifest, validate_entry
from ..progress import NO_PROGRESS, Progress
from ..settings import Settings
from . import state
from .store import RECORD_NAME, RemoteError, RemoteStore

FORMAT = 1
FETCH_PREFIX = ".tmp-fetch-"
STATE_EVERY_SEC = 1.0


class HashingReader:
    """read() through to `source`, hashing and counting what passed."""

    def __init__(self, source):
        self._source, self._hash, self.size = source, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _Counter:
    """boto3 calls transfer callbacks from its worker threads: count under a lock, report at most every second."""

    def __init__(self, total: int, report):
        self.total, self.done, self._report = max(total, 1), 0, report
        self._lock, self._last = threading.Lock(), 0.0

    def __call__(self, n: int) -> None:
        with self._lock:  # reports in order: an older count never overwrites a newer one
            self.done += n
            now = time.monotonic()
            if now - self._last < STATE_EVERY_SEC and self.done < self.total:
                return
            self._last = now
            self._report(self.done, self.total)


# -- upload -------------------------------------------------------------------------------------------
def upload_snapshot(settings: Settings, snapshot_id: str, progress: Progress = NO_PROGRESS, attempt: int = 1) -> dict:
    """Upload, read back, then write the record; the state file follows each stage. Idempotent:
    a snapshot whose record is already in the bucket is not uploaded again."""
    entry = Manifest.for_settings(settings).get(snapshot_id)
    store = RemoteStore(settings)
    progress = progress.scoped("upload")
    if store.get_json(store.key(snapshot_id, RECORD_NAME)) is not None:
        state.write_state(settings, snapshot_id, state.OK, at=utc_now_iso(), url=store.where(snapshot_id))
        return {"id": snapshot_id, "state": state.OK, "detail": "already in the bucket"}
    folder = settings.backup_dir / snapshot_id
    arts = sorted(entry["artifacts"].items())
    total = 2 * sum(a["size"] for _, a in arts)

    def report(done: int, _total: int, what: str = "uploading") -> None:
        pct = min(99, done * 100 // max(total, 1))  # ciphertext is a little longer than the plaintext counted
        try:
            state.write_state(settings, snapshot_id, state.UPLOADING, done=done, total=total, percent=pct,
                              attempt=attempt)
        except OSError:
            pass  # the state file is for display: a full BACKUP_DIR must not fail the upload itself
        progress(done, total, f"{what} {snapshot_id} to {store.url}: {pct}%")

    started = time.monotonic()
    counter = _Counter(total, report)
    report(0, total)
    objects = {}
    for name, art in arts:
        try:
            with open(folder / art["file"], "rb") as f:
                plain = HashingReader(f)
                stored = HashingReader(EncryptingReader(plain, settings.encryption_key) if settings.encryption_key
                                       else plain)
                store.upload(stored, store.key(snapshot_id, art["file"]), counter)
        except OSError as exc:
            raise RollbackError(f"cannot read {name} artifact of {snapshot_id}: {exc.strerror or exc}") from None
        if (plain.sha256, plain.size) != (art["sha256"], art["size"]):
            raise IntegrityError(f"{name} artifact of {snapshot_id} no longer matches its recorded SHA-256; not "
                                 f"published (python -m manage.rollback verify {snapshot_id})")
        objects[name] = {"file": art["file"], "size": stored.size, "sha256": stored.sha256}
    for name, art in arts:  # read back: proves the bucket holds bytes that restore to the manifest's
        _download_checked(store, settings, snapshot_id, name, art, objects[name], _Sink(), counter)
    store.put_json(store.key(snapshot_id, RECORD_NAME), _record(settings, entry, objects))
    seconds = time.monotonic() - started
    state.write_state(settings, snapshot_id, state.OK, at=utc_now_iso(), url=store.where(snapshot_id),
                      seconds=round(seconds, 1), attempt=attempt)
    progress(total, total, f"{snapshot_id} uploaded to {store.where(snapshot_id)} and read back")
    logbook.append(settings.rollback_log, logbook.format_event(
        "remote upload", id=snapshot_id, status="ok", bytes=sum(o["size"] for o in objects.values()),
        seconds=f"{seconds:.1f}", encrypted="yes" if settings.encryption_key else "no"))
    return {"id": snapshot_id, "state": state.OK, "url": store.where(snapshot_id), "seconds": round(seconds, 1)}


def record_failure(settings: Settings, snapshot_id: str, error: str, attempt: int, retry_in: float | None) -> dict:
    """The failed state (final when no retry follows), and a rollback.log line."""
    fields = {"error": error, "attempt": attempt, "final": retry_in is None, "at": utc_now_iso()}
    if retry_in is not None:
        fields["next_retry_in_sec"] = round(retry_in, 1)
    logbook.append(settings.rollback_log, logbook.format_event(
        "remote upload", id=snapshot_id, status="failed", attempt=attempt, final="yes" if retry_in is None else "no",
        error=error))
    return state.write_state(settings, snapshot_id, state.FAILED, **fields)


def _record(settings: Settings, entry: dict, objects: dict) -> dict:
    doc = {"format": FORMAT, "id": entry["id"], "created_at": entry["created_at"], "uploaded_at": utc_now_iso(),
           "tool_version": __version__, "objects": objects, "encryption": None}
    body = json.dumps(entry, ensure_ascii=False).encode("utf-8")
    if settings.encryption_key:  # notes, paths and revisions are the owner's too
        doc["encryption"] = {"algorithm": ALGORITHM, "key_id": key_id(settings.encryption_key)}
        sealed = EncryptingReader(io.BytesIO(body), settings.encryption_key).read()
        doc["sealed_entry"] = base64.b64encode(sealed).decode()
    else:
        doc["entry"] = entry
    return doc


def open_record(settings: Settings, record: dict) -> dict:
    """The manifest entry held by a remote record (decrypted with BACKUP_ENCRYPTION_KEY when sealed)."""
    if record.get("format") != FORMAT or not isinstance(record.get("objects"), dict):
        raise IntegrityError(f"remote record of {record.get('id')!r} has an unknown format")
    if record.get("encryption"):
        if not settings.encryption_key:
            raise ConfigError(f"BACKUP_ENCRYPTION_KEY: snapshot {record.get('id')} is encrypted in the bucket; "
                              f"set the key that sealed it (key id {record['encryption'].get('key_id')})")
        sealed_by, ours = record["encryption"].get("key_id"), key_id(settings.encryption_key)
        if sealed_by != ours:
            raise ConfigError(f"BACKUP_ENCRYPTION_KEY: snapshot {record.get('id')} was sealed with another key "
                              f"(key id {sealed_by}, this one is {ours})")
        out = io.BytesIO()
        writer = DecryptingWriter(out, settings.encryption_key)
        writer.write(base64.b64decode(record.get("sealed_entry", "")))
        writer.close()
        entry = json.loads(out.getvalue().decode("utf-8"))
    else:
        entry = record.get("entry")
    validate_entry(entry)
    if entry["id"] != record.get("id") or set(record["objects"]) != set(entry["artifacts"]):
        raise IntegrityError(f"remote record of {record.get('id')!r} does not match the entry it holds")
    return entry


class _Sink:
    """A write()-able that keeps nothing (the read-back only hashes)."""

    def write(self, data) -> int:
        return len(data)


def _download_checked(store: RemoteStore, settings: Settings, snapshot_id: str, name: str, art: dict, obj: dict,
                      target, counter) -> None:
    """Download one artifact into `target`, checking the stored bytes and the plaintext; IntegrityError if not."""
    plain = HashingWriter(target)
    decrypting = DecryptingWriter(plain, settings.encryption_key) if settings.encryption_key else None
    stored = HashingWriter(decrypting or plain)
    store.download(store.key(snapshot_id, obj["file"]), stored, counter)
    if decrypting is not None:
        decrypting.close()
    if (stored.sha256, stored.size) != (obj["sha256"], obj["size"]):
        raise IntegrityError(f"remote {name} object of {snapshot_id}: SHA-256 mismatch (recorded "
                             f"{obj['sha256'][:12]}…, read {stored.sha256[:12]}…, {stored.size} bytes); refused")
    if (plain.sha256, plain.size) != (art["sha256"], art["size"]):
        raise IntegrityError(f"remote {name} artifact of {snapshot_id}: restores to SHA-256 {plain.sha256[:12]}…, "
                             f"the manifest records {art['sha256'][:12]}…; refused")


# -- fetch --------------------------------------------------------------------------------------------
def fetch_snapshot(settings: Settings, snapshot_id: str, progress: Progress = NO_PROGRESS) -> dict:
    """Download a remote snapshot into BACKUP_DIR/<id>, verified, and record it in the manifest; returns
    its entry. Call with the service lock held (snapshot and prune remove unfinished folders under it)."""
    store = RemoteStore(settings)
    record = store.get_json(store.key(snapshot_id, RECORD_NAME))
    if record is None:
        raise SnapshotNotFound(f"snapshot {snapshot_id} is not in {store.url} (no complete copy)")
    entry = open_record(settings, record)
    arts = sorted(entry["artifacts"].items())
    total = sum(a["size"] for _, a in arts)
    _check_room(settings, total)
    tmp, final = settings.backup_dir / f"{FETCH_PREFIX}{snapshot_id}", settings.backup_dir / snapshot_id
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    counter = _Counter(total, lambda done, t: progress(done, t, f"fetching {snapshot_id} from {store.url}: "
                                                              f"{done >> 20} of {t >> 20} MiB"))
    progress(0, max(total, 1), f"fetching {snapshot_id} from {store.where(snapshot_id)}")
    try:
        for name, art in arts:
            with open_private(tmp / art["file"], binary=True) as f:
                _download_checked(store, settings, snapshot_id, name, art, record["objects"][name], f, counter)
                f.flush()
                os.fsync(f.fileno())
        atomic_write_bytes(tmp / "snapshot.json", json.dumps(entry, indent=2, ensure_ascii=False).encode())
        fsync_dir(tmp)
        _swap_in(settings, tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RollbackError(f"cannot write {snapshot_id} into {settings.backup_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    Manifest.for_settings(settings).mutate(
        lambda entries: entries if any(e["id"] == snapshot_id for e in entries) else _insert(entries, entry))
    state.write_state(settings, snapshot_id, state.OK, at=record.get("uploaded_at"), url=store.where(snapshot_id))
    progress(total, max(total, 1), f"{snapshot_id} fetched and verified ({total >> 20} MiB)")
    logbook.append(settings.rollback_log, logbook.format_event("remote fetch", id=snapshot_id, status="ok",
                                                               bytes=total))
    return entry


def _insert(entries: list[dict], entry: dict) -> list[dict]:
    """Keep the manifest in creation order: a snapshot fetched back goes where its time puts it."""
    return sorted(entries + [entry], key=lambda e: e.get("created_at") or "")


def _swap_in(settings: Settings, tmp, final) -> None:
    old = settings.backup_dir / f"{FETCH_PREFIX}replaced-{final.name}"
    if final.exists():  # a local copy that failed its check: replaced only now that the fetched one passed
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(settings.backup_dir)
    shutil.rmtree(old, ignore_errors=True)


def _check_room(settings: Settings, needed: int) -> None:
    probe = settings.backup_dir
    probe.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(probe).free
    if free < needed + (16 << 20):
        raise RollbackError(f"not enough room in BACKUP_DIR {probe} to fetch the snapshot: {free >> 20} MiB free, "
                            f"{needed >> 20} MiB needed")


__all__ = ["RemoteError", "fetch_snapshot", "open_record", "record_failure", "upload_snapshot"]
