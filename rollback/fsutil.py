"""Small filesystem helpers: durable writes, fsync of trees, hashing while writing."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that entries created/renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise(err: OSError) -> None:
    # os.walk swallows errors by default; a durability helper must not.
    raise err


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every regular file and directory under root (symlinks are not followed), root last."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False, onerror=_raise):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue  # symlinks, FIFOs, sockets: nothing to flush (and a FIFO would block)
            # O_NONBLOCK: if the entry was swapped for a FIFO meanwhile, do not hang.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)  # bottom-up walk: root is the last dirpath


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace path with data atomically: temp file in the same dir, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed the creation mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # already renamed onto path
        raise


def open_private(path: str | os.PathLike, binary: bool = False):
    """Open `path` for writing (created or truncated) with mode 0600 whatever the umask: what goes in
    BACKUP_DIR (row data, file listings, artifacts) is readable by the service's user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    if binary:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape")


class HashingWriter:
    """Write-through wrapper around a binary file that tracks the SHA-256 and size of what passed."""

    def __init__(self, fileobj: BinaryIO):
        self._file = fileobj
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._file.write(view)
        self._hash.update(view)
        self._size += len(view)
        return len(view)

    def flush(self) -> None:
        self._file.flush()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size


def sha256_file(
    path: str | os.PathLike,
    chunk: int = 1 << 20,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Return (sha256 hexdigest, size) of a file, reading it in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
            if progress is not None:
                progress(size)
    return digest.hexdigest(), size


def syncfs(path: str | os.PathLike) -> None:
    """Flush every dirty file and directory of the filesystem holding `path` (Linux syncfs(2))."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    except AttributeError:  # no syncfs in this libc: the whole-system sync is a superset
        os.sync()
    finally:
        os.close(fd)


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): both exist before and after, whatever
    happens. False when the kernel, libc or filesystem cannot (the caller then renames twice)."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))
