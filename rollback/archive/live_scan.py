"""Check the members of a tar stream while it is being written, so the archive is never read again.

The snapshot pipes GNU tar's output into the compressor; `LiveScan` receives the same uncompressed
chunks and, in a thread of its own, runs them through tarfile (stream mode) and the MemberPolicy a
restore applies. A refusal is kept and raised by `finish()`; after one, the rest of the stream is
drained unread so the writer never blocks on a full queue. The queue is bounded: at most
QUEUE_CHUNKS chunks wait in memory. `visit`, when given, is called with each admitted member and the
SHA-256 of its content (regular files; None for the others): what a listing of the archive needs,
without reading the archive again.
"""

from __future__ import annotations

import hashlib
import io
import queue
import tarfile
import threading

from typing import Callable

from rollback.errors import IntegrityError, UnsafeArchive

from .policy import MemberPolicy

QUEUE_CHUNKS = 8
_END = None


class _QueueReader:
    """A forward-only file object over the chunks put in a queue (None ends the stream), with tell()
    and forward seek() so tarfile reads it in "r:" mode: a member's data is skipped by dropping
    chunks, and a header read copies only its own bytes (tarfile's "r|" stream mode re-copies its
    whole buffer on every read, which made the scan of many small files several times slower)."""

    def __init__(self, chunks: "queue.Queue[bytes | None]"):
        self._chunks = chunks
        self._current, self._pos = b"", 0  # the chunk being read and the position in it
        self._offset = 0  # position in the whole stream
        self._ended = False

    def _fill(self) -> bool:
        """Make unread bytes available in the current chunk; False at the end of the stream."""
        while self._pos >= len(self._current):
            if self._ended:
                return False
            chunk = self._chunks.get()
            if chunk is _END:
                self._ended = True
                return False
            self._current, self._pos = chunk, 0
        return True

    def _take(self, limit: int) -> int:
        n = min(limit, len(self._current) - self._pos)
        self._pos += n
        self._offset += n
        return n

    def read(self, size: int = -1) -> bytes:
        parts = []
        remaining = size
        while remaining != 0 and self._fill():
            start = self._pos
            n = self._take(len(self._current) if remaining < 0 else remaining)
            parts.append(self._current[start:start + n])
            remaining = remaining - n if remaining > 0 else remaining
        return b"".join(parts)

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset < self._offset:
            raise io.UnsupportedOperation("the archive stream is forward-only")
        while self._offset < offset and self._fill():
            self._take(offset - self._offset)
        return self._offset

    def drain(self) -> None:
        while self._fill():
            self._take(len(self._current))


class LiveScan:
    """Feed it the uncompressed tar stream with `write`; `finish()` after the last chunk raises
    UnsafeArchive (or IntegrityError for a stream tarfile cannot read) and returns the policy."""

    def __init__(self, policy: MemberPolicy, label: str,
                 visit: Callable[[tarfile.TarInfo, str | None], None] | None = None):
        self.policy, self.label, self.visit = policy, label, visit
        self._chunks: "queue.Queue[bytes | None]" = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._reader = _QueueReader(self._chunks)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="archive-live-scan", daemon=True)
        self._thread.start()

    def write(self, chunk: bytes) -> int:
        self._chunks.put(bytes(chunk))
        return len(chunk)

    def close(self) -> None:
        """End the stream (also on the failure path: the thread then stops)."""
        if self._thread.is_alive():
            self._chunks.put(_END)
        self._thread.join()

    def finish(self) -> MemberPolicy:
        self.close()
        if self._error is not None:
            raise self._error
        return self.policy

    def _run(self) -> None:
        try:
            with tarfile.open(fileobj=self._reader, mode="r:") as tar:
                for member in tar:
                    self.policy.admit(member)
                    if self.visit is not None:
                        self.visit(member, _content_sha256(tar, self._reader, member) if member.isfile() else None)
                    tar.members.clear()  # tarfile keeps every TarInfo; keep memory flat
            self.policy.finish()
        except UnsafeArchive as exc:
            self._error = exc
        except (tarfile.TarError, EOFError, ValueError) as exc:
            self._error = IntegrityError(f"{self.label}: tar stream unreadable while archiving: {exc}")
        except BaseException as exc:  # raised again by finish() in the writer's thread
            self._error = exc
        finally:
            self._reader.drain()


def _content_sha256(tar: tarfile.TarFile, reader: _QueueReader, member: tarfile.TarInfo) -> str:
    """SHA-256 of a regular member's content, read straight from the stream (tarfile's extractfile
    costs more than the hashing for the many small files of a typical data dir); tarfile's next()
    then seeks past the padding. Sparse members go through extractfile, which maps their holes."""
    digest = hashlib.sha256()
    if member.issparse():
        content = tar.extractfile(member)
        while chunk := content.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    reader.seek(member.offset_data)
    left = member.size
    while left > 0:
        chunk = reader.read(min(left, 1 << 20))
        if not chunk:
            raise EOFError(f"{member.name}: the stream ended inside its content")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()
