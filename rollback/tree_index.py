"""The data tree's index in a snapshot: what the archive holds, member by member, and its summary.

A snapshot writes the archive and nothing else about the tree (reading every member back costs more
than the dump and the archive together, and the deploy waits for the snapshot). Right after it, a
background task runs `index_archive`: one pass over the archive that hashes its bytes (checked against
the manifest), applies the restore's member policy (an entry created while the snapshot ran is caught
here, seconds later) and writes beside the archive

- `data-listing.jsonl`: one line per file and symlink (path, kind, size, mtime, sha256 or target), in
  walk order, which a restore plan compares with the live tree;
- `data-summary.json`: `{"files", "bytes", "tree_sha256"}` (paths, kinds, file contents, link targets; no
  modes or times), which a drill compares with the tree it extracted (`tree_summary`), or
  `{"unsafe": reason}` when the policy refuses a member: a cold restore of that snapshot is refused.

`summary_for` / `ensure_index` give a consumer the index whether or not the task has run yet (snapshots
of older versions carry the summary in their manifest entry; a snapshot pulled from the bucket, or one
whose task never ran, is indexed on first use). Both files are written beside, then renamed: one that
exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import threading
from pathlib import Path

from . import logbook
from .archive.live_scan import LiveScan
from .archive.policy import MemberPolicy
from .archive.stream import CHUNK, HashingReader, check_sha256, decoding, decompressor, detect_codec
from .errors import RollbackError, UnsafeArchive
from .fsutil import atomic_write_bytes, fsync_dir, open_private
from .settings import Settings

DATA_LISTING = "data-listing.jsonl"
DATA_SUMMARY = "data-summary.json"


def _summary(lines: list[tuple]) -> dict:
    """(path, kind, size, digest[, mtime]) lines -> {"files", "bytes", "tree_sha256"}, order independent.
    Sorts `lines` in place (no copy: a 2 GB data dir has ~120 000 of them)."""
    h = hashlib.sha256()
    files = total = 0
    lines.sort()
    for line in lines:
        path, kind, size, digest = line[:4]
        digest = digest.hex() if isinstance(digest, bytes) else digest
        h.update(f"{path}\0{kind}\0{size}\0{digest}\n".encode("utf-8", "surrogateescape"))
        if kind == "file":
            files += 1
            total += size
    return {"files": files, "bytes": total, "tree_sha256": h.hexdigest()}


def _hash_stream(read) -> str:
    h = hashlib.sha256()
    while chunk := read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _norm(name: str) -> str:
    return os.path.normpath(name.removeprefix("./")).lstrip("/")


class TreeListing:
    """Collects (path, kind, size, digest, mtime) lines of an archive's members as they go by: fed by
    the archive's LiveScan (`index_archive`). Kept compact (one tuple per member, a file's SHA-256 as
    32 bytes): a 2 GB data dir has ~120 000 members, all held until the end."""

    def __init__(self):
        self.lines: list[tuple[str, str, int, bytes | str, int]] = []
        self.hardlinks = False

    def visit(self, member: tarfile.TarInfo, content_sha256: str | None) -> None:
        path = _norm(member.name)
        if path in (".", ""):
            return
        mtime = int(member.mtime)
        if member.isfile():
            self.lines.append((path, "file", member.size, bytes.fromhex(content_sha256 or ""), mtime))
        elif member.isdir():
            self.lines.append((path, "dir", 0, "", mtime))
        elif member.issym():
            self.lines.append((path, "symlink", 0, member.linkname, mtime))
        elif member.islnk():  # a hard link extracts as a regular file with the target's content
            self.hardlinks = True
            self.lines.append((path, "hardlink", 0, _norm(member.linkname), mtime))

    def finish(self, listing: Path | None = None) -> dict:
        """The summary; with `listing`, also write there one JSON line per file and symlink (path, kind,
        size, mtime, sha256 or target), which a restore plan compares with the live tree."""
        if self.hardlinks:
            _resolve_hardlinks(self.lines)
        summary = _summary(self.lines)
        if listing is not None:
            _write_listing(listing, self.lines)
        return summary


def _write_listing(dest: Path, lines: list[tuple]) -> None:
    """Written beside, then renamed: a listing that exists is complete (a plan reads it as the snapshot's).
    Lines go in walk order (path components compared one by one: "/" sorts before every other character)."""
    lines.sort(key=lambda line: line[0].replace("/", "\0"))
    partial = dest.with_name(f".{dest.name}.{os.getpid()}-{threading.get_ident()}.partial")  # a plan and the index may race
    try:
        with open_private(partial) as out:
            quote = json.JSONEncoder(ensure_ascii=False).encode
            for path, kind, size, digest, mtime in lines:  # the bytes json.dumps gives the dict, written faster
                if kind == "file":
                    out.write(f'{{"path": {quote(path)}, "kind": "file", "size": {size}, "mtime": {mtime}, '
                              f'"sha256": "{digest.hex()}"}}\n')
                elif kind == "symlink":
                    out.write(f'{{"path": {quote(path)}, "kind": "symlink", "size": {size}, "mtime": {mtime}, '
                              f'"target": {quote(digest)}}}\n')
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)  # ENOSPC, say: no half listing left in the snapshot folder
        raise
    fsync_dir(dest.parent)


def _resolve_hardlinks(lines: list[tuple]) -> None:
    """In place: a hard link becomes the file it links to (size and content digest)."""
    targets = {line[3] for line in lines if line[1] == "hardlink"}
    files = {path: (size, digest) for path, kind, size, digest, _mtime in lines if kind == "file" and path in targets}
    for i, (path, kind, _size, target, mtime) in enumerate(lines):
        if kind == "hardlink" and target in files:
            lines[i] = (path, "file", *files[target], mtime)


def tree_summary(root: Path, skip_top: tuple[str, ...] = ()) -> dict:
    """Summary of an extracted tree, comparable with `archive_summary`; top-level names starting with
    one of `skip_top` are left out (the reserved names beside a live data dir are never archived)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and skip_top:
            dirnames[:] = [d for d in dirnames if not d.startswith(skip_top)]
            filenames = [f for f in filenames if not f.startswith(skip_top)]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                lines.append((rel, "symlink", 0, os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                lines.append((rel, "dir", 0, ""))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    lines.append((rel, "file", st.st_size, _hash_stream(f.read)))
            else:
                lines.append((rel, "other", 0, ""))
    return _summary(lines)


def index_archive(folder: Path, artifact: dict) -> dict:
    """Index the data archive `artifact` (its manifest record) in the snapshot folder: write the listing
    and the summary, return the summary. A refused member gives `{"unsafe": reason}` (written too, no
    listing); bytes that differ from the record raise IntegrityError and write nothing."""
    archive = folder / artifact["file"]
    listing = TreeListing()
    scan = LiveScan(MemberPolicy(max_bytes=1 << 62), archive.name, listing.visit)
    with open(archive, "rb") as raw:
        codec = detect_codec(raw, archive.name)
        hashing = HashingReader(raw)
        try:
            with decoding(archive.name):
                stream = decompressor(codec, hashing)
                while chunk := stream.read(CHUNK):
                    scan.write(chunk)
            hashing.drain()
        finally:
            scan.close()
    check_sha256(archive.name, hashing.sha256, artifact["sha256"])
    try:
        scan.finish()
    except UnsafeArchive as exc:
        summary = {"unsafe": str(exc)}
    else:
        summary = listing.finish(folder / DATA_LISTING)
    atomic_write_bytes(folder / DATA_SUMMARY, json.dumps(summary).encode())
    fsync_dir(folder)
    return summary


def recorded_summary(folder: Path, entry: dict) -> dict | None:
    """The index's summary if it exists (in the entry for snapshots of older versions), else None."""
    old = (entry.get("stats") or {}).get("data")
    if old:
        return old
    try:
        return json.loads((folder / DATA_SUMMARY).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RollbackError(f"{folder / DATA_SUMMARY}: unreadable ({exc})") from None


def ensure_index(settings: Settings, entry: dict) -> dict:
    """The snapshot's summary, indexing its archive first when that has not been done (the listing too:
    a snapshot whose summary came in its entry may lack the listing). Raises RollbackError when the
    archive is not here."""
    folder = settings.backup_dir / entry["id"]
    summary = recorded_summary(folder, entry)
    if summary is not None and ("unsafe" in summary or (folder / DATA_LISTING).is_file()):
        return summary
    art = entry["artifacts"]["data"]
    if not (folder / art["file"]).is_file():
        raise RollbackError(f"snapshot {entry['id']}: its data archive {art['file']} is not in {folder}")
    indexed = index_archive(folder, art)
    if "unsafe" in indexed:
        logbook.append(settings.rollback_log, logbook.format_event(
            "snapshot index refused", id=entry["id"], reason=indexed["unsafe"]))
    return summary or indexed


def summary_for(settings: Settings, entry: dict) -> dict:
    """The summary a drill compares with: recorded, or computed now."""
    return recorded_summary(settings.backup_dir / entry["id"], entry) or ensure_index(settings, entry)
