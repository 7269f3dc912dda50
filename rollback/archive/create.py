"""Create the compressed tar archive that holds a snapshot of the data directory.

GNU tar writes the tree to a pipe; we compress it (gzip, or zstd on all cores) into the artifact
through a HashingWriter, so the SHA-256 and size are known without reading the file again. (Which
members a restore may write is checked on the live tree before, by tree_check, and on the archive
after, by rollback.tree_index.)
"""

from __future__ import annotations

import gzip
import os
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from rollback import proc
from rollback.fsutil import HashingWriter, fsync_dir

from .stream import CODECS

DEFAULT_EXCLUDES = (".pre-*", ".rollback-stage-*", ".rollback-standby*")  # top-level names under the data dir never archived
TAR_ENV = {"LC_ALL": "C.UTF-8"}  # stable (English) error messages and UTF-8 file names, whatever our locale


@dataclass(frozen=True)
class ArchiveInfo:
    file: str  # basename of the archive file
    sha256: str  # of the compressed file bytes
    size: int  # compressed file size
    tar_bytes: int  # size of the uncompressed tar stream (used later as a size cap)
    codec: str = "gzip"


def create_archive(
    source_dir: Path,
    dest_file: Path,
    *,
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES,
    gzip_level: int = 1,
    codec: str = "gzip",
    zstd_level: int = 3,
    progress: Callable[[int], None] | None = None,
    timeout: float | None = None,
) -> ArchiveInfo:
    """Archive source_dir into a new compressed POSIX tar at dest_file (must not exist yet).

    `progress` receives the number of tar bytes read so far. Raises CommandFailed if tar fails or
    times out; OSErrors while writing (ENOSPC ...) propagate unchanged. The partial dest_file is
    removed on any failure.
    """
    source_dir, dest_file = Path(source_dir), Path(dest_file)
    if codec not in CODECS:
        raise ValueError(f"unknown archive codec {codec!r}")
    argv = _tar_create_argv(source_dir, excludes)
    # O_EXCL: never clobber an existing artifact (and never delete one we did not create).
    fd = os.open(dest_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    out = os.fdopen(fd, "wb")
    try:
        sink = HashingWriter(out)
        with _compressing(codec, sink, zstd_level if codec == "zstd" else gzip_level) as compressed:
            tar_bytes = proc.stream(argv, stdout=compressed.write, progress=progress, env=TAR_ENV, timeout=timeout)
        out.flush()
        os.fchmod(out.fileno(), 0o600)
        os.fsync(out.fileno())
        out.close()
        fsync_dir(dest_file.parent)
    except BaseException:
        with suppress(OSError):
            out.close()  # may fail again (ENOSPC on flush); the first error is the one to report
        with suppress(FileNotFoundError):
            dest_file.unlink()
        raise
    return ArchiveInfo(file=dest_file.name, sha256=sink.sha256, size=sink.size, tar_bytes=tar_bytes, codec=codec)


def _tar_create_argv(source_dir: Path, excludes: tuple[str, ...]) -> list[str]:
    """GNU tar command line writing the tree to stdout; excludes apply to top-level names only."""
    return [
        "tar",
        "-C",
        str(source_dir),
        "--create",
        "--format=posix",
        "--numeric-owner",
        # atime/ctime cannot be restored anyway; dropping them keeps every header smaller.
        "--pax-option=delete=atime,delete=ctime",
        # Anchor patterns at the archive root and keep '*' from crossing '/', so that
        # './.pre-*' can never match a nested 'sub/.pre-x'.
        "--anchored",
        "--no-wildcards-match-slash",
        *(f"--exclude=./{pattern}" for pattern in excludes),
        "-f",
        "-",
        ".",
    ]


@contextmanager
def _compressing(codec: str, sink: HashingWriter, level: int) -> Iterator[BinaryIO]:
    """A writer that compresses into sink; closing it (on success) writes the codec's trailer."""
    if codec == "zstd":
        import zstandard

        # All cores, and a frame checksum that decompression verifies.
        writer = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True).stream_writer(
            sink, closefd=False)
    else:
        writer = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=level, mtime=0)
    try:
        yield writer
    except BaseException:
        # Close quietly so that no finaliser writes a trailer later; the file is being deleted and
        # the original error is the one that matters.
        with suppress(Exception):
            writer.close()
        raise
    writer.close()
