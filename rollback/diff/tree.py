"""Two directory trees compared, streamed: files (and symlinks) added, changed and removed.

Both trees are walked in the order of their path components, a directory's children sorted by name,
and merged, so memory is bounded by one directory listing per level. Same size and mtime is the same
file (a restored tree keeps the archived mtimes); otherwise the SHA-256 decides.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..fsutil import open_private, sha256_file
from ..progress import NO_PROGRESS, Progress
from ..resources.data_tree import RESERVED_PREFIXES

FIRST_PATHS = 20  # paths of each kind kept for display


def compare_trees(replaced: Path, restored: Path, out_path: Path, progress: Progress = NO_PROGRESS,
                  notes: list[str] | None = None) -> dict:
    """Files added, changed and removed since the snapshot (the replaced tree against the restored
    one), written to `out_path` as JSON Lines; returns the counts and the first paths of each."""
    notes = notes if notes is not None else []
    counts = {"added": 0, "changed": 0, "removed": 0, "file": out_path.name}
    first: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    if not replaced.is_dir():
        notes.append(f"the replaced data tree {replaced} no longer exists: no file was compared")
        counts["file"] = None
        return dict(counts, first=first)
    with open_private(out_path) as out:
        def emit(op: str, rel: str, size: int) -> None:
            counts[op] += 1
            if len(first[op]) < FIRST_PATHS:
                first[op].append(rel)
            out.write(json.dumps({"op": op, "path": rel, "size": size}, ensure_ascii=False) + "\n")

        left, right = walk_tree(replaced), walk_tree(restored)
        a, b = next(left, None), next(right, None)
        seen = 0
        while a is not None or b is not None:
            if b is None or (a is not None and a.parts < b.parts):
                emit("added", a.rel, a.size)
                a = next(left, None)
            elif a is None or b.parts < a.parts:
                emit("removed", b.rel, b.size)
                b = next(right, None)
            else:
                if not _same_file(replaced, restored, a, b):
                    emit("changed", a.rel, a.size)
                a, b = next(left, None), next(right, None)
            seen += 1
            if seen % 500 == 0:
                progress(0, 1, f"data tree: {seen} files compared")
    progress(1, 1, f"data tree compared: {counts['added']} added, {counts['changed']} changed, "
                   f"{counts['removed']} removed")
    return dict(counts, first=first)


@dataclass(frozen=True)
class TreeEntry:
    parts: tuple[str, ...]
    kind: str  # "file" | "link"
    size: int
    mtime_ns: int
    target: str | None = None

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


def walk_tree(root: Path, prefix: tuple[str, ...] = ()) -> Iterator[TreeEntry]:
    """Files and symlinks under `root` in the order of their path components (a directory's children
    sorted by name, each directory walked where it sorts); the names reserved beside a mount point's
    live tree are skipped."""
    folder = root.joinpath(*prefix)
    for name in sorted(os.listdir(folder)):
        if not prefix and name.startswith(RESERVED_PREFIXES):
            continue
        st = os.lstat(folder / name)
        parts = prefix + (name,)
        if stat.S_ISDIR(st.st_mode):
            yield from walk_tree(root, parts)
        elif stat.S_ISLNK(st.st_mode):
            yield TreeEntry(parts, "link", 0, st.st_mtime_ns, os.readlink(folder / name))
        elif stat.S_ISREG(st.st_mode):
            yield TreeEntry(parts, "file", st.st_size, st.st_mtime_ns)


def _same_file(root_a: Path, root_b: Path, a: TreeEntry, b: TreeEntry) -> bool:
    if a.kind != b.kind or a.size != b.size or a.target != b.target:
        return False
    if a.kind == "link" or a.mtime_ns == b.mtime_ns:
        return True  # a restored tree keeps the archived mtimes: same size and mtime is the same file
    return sha256_file(root_a.joinpath(*a.parts))[0] == sha256_file(root_b.joinpath(*b.parts))[0]
