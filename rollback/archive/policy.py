"""The member policy: which tar members a restore may write, checked before anything is written.

Pure: it sees TarInfo-like members (name, type, mode, size, linkname) in archive order and keeps
what earlier members made of each path; it never touches the disk or runs anything. A refusal is
an UnsafeArchive whose message names the member.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from collections import deque

from rollback.errors import UnsafeArchive

FILE, DIRECTORY, SYMLINK, HARDLINK = "file", "directory", "symlink", "hardlink"
MAX_DEPTH = 256  # folders; deeper trees break recursive tools (Python's os.walk, rmtree) and no app needs them
_MAX_SYMLINK_HOPS = 40  # Linux MAXSYMLINKS
_DRIVE = re.compile(r"^[A-Za-z]:")

_KINDS = {
    tarfile.REGTYPE: FILE,
    tarfile.AREGTYPE: FILE,
    tarfile.DIRTYPE: DIRECTORY,
    tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK,
}
_TYPE_NAMES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


def _shown(name: str, limit: int = 200) -> str:
    """Name made safe for a one-line operator message."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)
    return text if len(text) <= limit else text[:limit] + "..."


def _unsafe(name: str, reason: str) -> UnsafeArchive:
    return UnsafeArchive(f"{_shown(name)}: {reason}")


def _path_problem(path: str, max_len: int, *, allow_dotdot: bool = False) -> str | None:
    """Why a member name or link target cannot be used as a relative path, or None."""
    if not path:
        return "empty name"
    if "\0" in path:
        return "NUL byte in name"
    try:
        length = len(os.fsencode(path))
    except UnicodeError:
        return "name cannot be encoded"
    if length > max_len:
        return f"name longer than {max_len} bytes"
    if path.startswith(("/", "\\")) or _DRIVE.match(path):
        return "absolute path"
    if not allow_dotdot and ".." in path.split("/"):
        return "'..' component"
    return None


def _parts(path: str) -> tuple[str, ...]:
    """Path components without '.' and empty ones ('./a//b' -> ('a', 'b'))."""
    return tuple(p for p in path.split("/") if p not in ("", "."))


def _symlink_problem(base: tuple[str, ...], target: str, symlinks: dict) -> str | None:
    """Follow a relative target from directory base, expanding archive symlinks in `symlinks`.

    Returns why it is unsafe (leaves the root, loops), or None. With an empty `symlinks`
    this is the purely lexical check.
    """
    pending = deque(target.split("/"))
    current = list(base)
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return f"symlink target {target!r} points outside the archive"
            current.pop()
            continue
        current.append(part)
        link = symlinks.get(tuple(current))
        if link is not None:
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                return f"symlink target {target!r} loops or chains too many symlinks"
            current.pop()
            pending.extendleft(reversed(link.split("/")))
    return None


class MemberPolicy:
    """Stateful checks applied to every member, in archive order, before anything is written."""

    def __init__(self, *, max_bytes: int, max_members: int = 1_000_000, max_name_len: int = 4096):
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.max_name_len = max_name_len
        self.kinds: dict[tuple[str, ...], str] = {(): DIRECTORY}  # what each path is (or will be)
        self.symlinks: dict[tuple[str, ...], str] = {}
        self.members = 0
        self.total_bytes = 0

    def admit(self, member: tarfile.TarInfo) -> tuple[tuple[str, ...], str]:
        """Check one member and record it; return (path components, kind) or raise UnsafeArchive."""
        name = member.name
        self.members += 1
        if self.members > self.max_members:
            raise _unsafe(name, f"more than {self.max_members} members")
        problem = _path_problem(name, self.max_name_len)
        if problem:
            raise _unsafe(name, problem)
        kind = _KINDS.get(member.type)
        if kind is None:
            label = _TYPE_NAMES.get(member.type, f"type {member.type!r}")
            raise _unsafe(name, f"unsupported member type: {label}")
        parts = _parts(name)
        if not parts and kind != DIRECTORY:
            raise _unsafe(name, "the archive root must be a directory")
        if len(parts) > MAX_DEPTH:
            raise _unsafe(name, f"nested more than {MAX_DEPTH} folders deep")
        if member.mode & stat.S_ISUID or (member.mode & stat.S_ISGID and kind != DIRECTORY):
            # A restore runs as the service user, often root: a data directory has no use for set-id
            # programs, and restoring one would plant it. (A setgid directory only sets the group of
            # new files in it and is kept.)
            raise _unsafe(name, f"set-user/group-ID mode {oct(member.mode & 0o7777)} on a {kind}")
        self._check_parents(name, parts)
        self._check_duplicate(name, parts, kind)
        if kind == SYMLINK:
            self._check_symlink(name, parts, member.linkname)
        elif kind == HARDLINK:
            self._check_hardlink(name, member.linkname)
        elif kind == FILE:
            if member.size < 0:
                raise _unsafe(name, "negative size")
            self.total_bytes += member.size
            if self.total_bytes > self.max_bytes:
                raise _unsafe(name, f"regular files exceed the limit of {self.max_bytes} bytes")
        self.kinds[parts] = kind
        return parts, kind

    def finish(self) -> None:
        """Whole-archive check: no symlink may escape through other archived symlinks."""
        for parts, target in self.symlinks.items():
            problem = _symlink_problem(parts[:-1], target, self.symlinks)
            if problem:
                raise _unsafe("/".join(parts), problem)

    def _check_parents(self, name: str, parts: tuple[str, ...]) -> None:
        for i in range(1, len(parts)):
            prefix = parts[:i]
            kind = self.kinds.get(prefix)
            if kind is None:
                self.kinds[prefix] = DIRECTORY  # implied by this member; created on extraction
            elif kind == SYMLINK:
                raise _unsafe(name, f"path goes through the archived symlink {'/'.join(prefix)!r}")
            elif kind != DIRECTORY:
                raise _unsafe(name, f"parent {'/'.join(prefix)!r} is not a directory")

    def _check_duplicate(self, name: str, parts: tuple[str, ...], kind: str) -> None:
        # GNU tar never repeats a name in a fresh archive; only dir-after-dir is harmless.
        previous = self.kinds.get(parts)
        if previous is not None and not (previous == DIRECTORY and kind == DIRECTORY):
            raise _unsafe(name, f"duplicate member would replace a {previous}")

    def _check_symlink(self, name: str, parts: tuple[str, ...], target: str) -> None:
        # '..' is fine in a symlink target as long as it stays inside the root.
        problem = _path_problem(target, self.max_name_len, allow_dotdot=True)
        if problem:
            raise _unsafe(name, f"symlink target {_shown(target)!r}: {problem}")
        problem = _symlink_problem(parts[:-1], target, {})
        if problem:
            raise _unsafe(name, problem)
        self.symlinks[parts] = target

    def _check_hardlink(self, name: str, target: str) -> None:
        problem = _path_problem(target, self.max_name_len)
        if problem:
            raise _unsafe(name, f"hardlink target {_shown(target)!r}: {problem}")
        if self.kinds.get(_parts(target)) not in (FILE, HARDLINK):
            raise _unsafe(name, f"hardlink target {_shown(target)!r} is not an earlier regular file")
