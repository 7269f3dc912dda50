"""Check a live tree against the restore's member policy before it is archived, without reading a byte
of file content.

GNU find lists every entry the archive will hold (type, mode, size, device and inode, link count, link
target, path) at C speed, in the same parents-first order as tar, and each entry goes through the same
MemberPolicy a restore applies to the archive's members. A second path to an inode listed earlier is
given as a tar hard link to the first, as tar writes it; sockets are left out, as tar leaves them out.
What this cannot see is an entry created after find passed it: the archive's own scan after the
snapshot (rollback.tree_index) and every restore's extraction still apply the policy to the archive.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path
from typing import NamedTuple

from rollback.errors import RollbackError

from .create import DEFAULT_EXCLUDES, TAR_ENV
from .policy import MemberPolicy

# type (find %y) -> tar member type; sockets ("s") are skipped, as GNU tar skips them
_TAR_TYPES = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "b": tarfile.BLKTYPE,
              "c": tarfile.CHRTYPE, "p": tarfile.FIFOTYPE}
# five space-separated fields, then the path and the link target, each ended by NUL
_FORMAT = r"%y %m %s %D:%i %n %P\0%l\0"


class _Entry(NamedTuple):
    """The fields of a tarfile.TarInfo the policy reads."""
    name: str
    type: bytes
    mode: int
    size: int
    linkname: str


def check_tree(source_dir: Path, excludes: tuple[str, ...] = DEFAULT_EXCLUDES, timeout: float | None = None) -> int:
    """Raise UnsafeArchive naming the first entry a restore would refuse; return the number of entries
    checked. Raises RollbackError when find cannot list the tree (the archive would fail the same way)."""
    policy = MemberPolicy(max_bytes=1 << 62)
    for entry in _entries(Path(source_dir), excludes, timeout):
        policy.admit(entry)
    policy.finish()
    return policy.members


def _entries(source_dir: Path, excludes: tuple[str, ...], timeout: float | None):
    prune: list[str] = []
    for pattern in excludes:  # top-level names only, as the archive's --anchored excludes
        prune += (["-o"] if prune else []) + ["-path", f"./{pattern}"]
    argv = ["find", ".", "(", *prune, ")", "-prune", "-o", "-printf", _FORMAT] if prune else \
        ["find", ".", "-printf", _FORMAT]
    try:
        done = subprocess.run(argv, cwd=source_dir, capture_output=True, timeout=timeout,
                              env={**os.environ, **TAR_ENV})
    except subprocess.TimeoutExpired:
        raise RollbackError(f"listing {source_dir} took longer than {timeout:.0f} s") from None
    except OSError as exc:
        raise RollbackError(f"cannot list {source_dir}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise RollbackError(f"cannot list {source_dir}: {detail[0] if detail else f'find exited {done.returncode}'}")
    fields = done.stdout.split(b"\0")
    first_path: dict[bytes, str] = {}  # inode -> the first path tar will archive it under
    for i in range(0, len(fields) - 1, 2):
        kind, mode, size, inode, links, rel = fields[i].split(b" ", 5)
        if kind == b"s":
            continue
        tar_type = _TAR_TYPES.get(kind.decode())
        name = "./" + os.fsdecode(rel)
        if tar_type is None:  # door or unknown: the policy names it
            yield _Entry(name, kind, int(mode, 8), 0, "")
            continue
        linkname = os.fsdecode(fields[i + 1]) if kind == b"l" else ""
        if kind == b"f" and int(links) > 1:
            if inode in first_path:
                tar_type, linkname = tarfile.LNKTYPE, first_path[inode]
            else:
                first_path[inode] = name
        yield _Entry(name, tar_type, int(mode, 8), int(size) if tar_type == tarfile.REGTYPE else 0, linkname)
