"""One snapshot or restore at a time, across processes and workers on this host.

Two layers:
- a kernel `flock` on BACKUP_DIR/.lock, held while any step or snapshot runs; the kernel releases it
  when the holder dies, so a killed worker never leaves a stale lock;
- BACKUP_DIR/active.json, naming the transaction that owns the service between the steps of a
  restore canvas (each step is its own Celery task, possibly in another process). It is written
  and cleared only while holding the flock; a worker that starts reconciles it with the journal.
  A record whose transaction the journal already calls finished is stale (its holder died between
  writing `succeeded`/`failed` and removing the record) and does not hold the service.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Iterator

from .errors import LockHeld, RollbackError
from .fsutil import atomic_write_bytes, fsync_dir
from .ids import TXN_ID_RE, utc_now_iso
from .journal import FINAL_STATES, Journal
from .manifest import ensure_private_dir

LOCK_NAME = ".lock"
ACTIVE_NAME = "active.json"


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another snapshot or restore is in progress"
    kind = holder.get("kind", "operation")
    ident = holder.get("txn") or holder.get("snapshot_id") or ""
    return f"{kind} {ident} in progress".replace("  ", " ").strip()


class ServiceLock:
    def __init__(self, backup_dir: Path):
        self.backup_dir = Path(backup_dir)
        self.lock_path = self.backup_dir / LOCK_NAME
        self.active_path = self.backup_dir / ACTIVE_NAME

    @contextlib.contextmanager
    def held(self, purpose: dict, wait_sec: float = 0.0) -> Iterator[None]:
        """Hold the flock for the duration; raise LockHeld if another process has it."""
        ensure_private_dir(self.backup_dir)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_sec
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        holder = self._read_holder(fd) or self.active() or {}
                        raise LockHeld(f"refused: {describe_holder(holder)}", holder) from None
                    time.sleep(0.1)
            record = dict(purpose, pid=os.getpid(), since=utc_now_iso())
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    def flock_holder(self) -> dict | None:
        """Who holds the flock now (its record), or None when nobody does; probes with a shared lock
        for an instant, never waits."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holder = self._read_holder(fd)
                return holder if isinstance(holder, dict) else {}
            return None  # closing the fd releases the probe
        finally:
            os.close(fd)

    @staticmethod
    def _read_holder(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (ValueError, OSError):
            return {}

    # -- the owning transaction (call these only while holding the flock) ------------------
    def active(self) -> dict | None:
        try:
            record = json.loads(self.active_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn file cannot happen (atomic writes); treat anything unparsable as held.
            return {"kind": "restore", "txn": "unknown (active.json unreadable)"}
        if not isinstance(record, dict):
            return {"kind": "restore", "txn": "unknown (active.json unreadable)"}
        if self._finished(record.get("txn")):
            return None  # stale: the journal says the transaction ended (see the module docstring)
        return record

    def _finished(self, txn: object) -> bool:
        """True when the journal of `txn` records a final state."""
        if not isinstance(txn, str) or not TXN_ID_RE.fullmatch(txn):
            return False
        try:
            doc = Journal(self.backup_dir).load(txn)
        except (RollbackError, OSError):
            return False  # no readable journal: keep the record (reconcile decides)
        return isinstance(doc, dict) and doc.get("status") in FINAL_STATES

    def claim(self, record: dict) -> None:
        current = self.active()
        if current and current.get("txn") != record.get("txn"):
            raise LockHeld(f"refused: {describe_holder(current)}", current)
        try:
            atomic_write_bytes(self.active_path, json.dumps(record).encode(), mode=0o600)
        except OSError as exc:
            raise RollbackError(f"cannot write {self.active_path} ({exc.strerror or exc})") from None

    def release(self, txn: str) -> None:
        try:
            current = json.loads(self.active_path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if isinstance(current, dict) and current.get("txn") == txn:
            self.active_path.unlink()
            fsync_dir(self.backup_dir)  # a power cut must not bring the claim back


@contextlib.contextmanager
def exclusive_or_refuse(path: Path, refusal: str, holder: dict | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block; LockHeld(refusal) at once if another process has it
    (one standby preparation, one drill at a time on this host)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(refusal, holder or {}) from None
            raise
        yield
    finally:
        os.close(fd)
