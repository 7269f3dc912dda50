"""What a snapshot holds, counted when it is taken, so that a later restore (a drill, a plan) can be
compared with it: rows per table of the database, and the data tree's file count, bytes and content
hash.

- `table_row_counts(settings)`: exact `count(*)` of every ordinary or partitioned table outside the
  system schemas, keyed `schema.table`. With `exported_row_counts` the counts are taken in a
  REPEATABLE READ transaction whose snapshot pg_dump then dumps (`pg_dump --snapshot`), so the
  recorded counts are exactly the dump's, even while the app writes.
- `archive_summary(archive)` reads the data archive itself (not the live tree, which may change
  meanwhile) and `tree_summary(root)` walks an extracted tree; both give `{"files", "bytes",
  "tree_sha256"}` computed the same way (paths, types, file contents, link targets; no modes or
  times), so an extraction that lost or changed anything does not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from . import pg
from .archive.stream import decompressor, detect_codec
from .errors import RollbackError
from .fsutil import fsync_dir, open_private
from .settings import Settings

CHUNK = 1 << 20
DATA_LISTING = "data-listing.jsonl"
_TABLES_SQL = (
    "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
    "where c.relkind in ('r', 'p') and not c.relispartition "
    "and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%%' "
    "and n.nspname not like 'pg_temp%%' order by 1, 2")


def _count_tables(conn: psycopg.Connection) -> dict[str, int]:
    counts = {}
    for schema, name in conn.execute(_TABLES_SQL).fetchall():
        query = sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        counts[f"{schema}.{name}"] = int(conn.execute(query).fetchone()[0])
    return counts


def table_row_counts(settings: Settings, dbname: str | None = None) -> dict[str, int]:
    """Exact row counts per table (`schema.table` -> rows) of the live database, or of `dbname`
    (a side database on the same server). Partitions count in their parent only."""
    try:
        with pg.connect(settings.database, dbname) as conn, conn.transaction():
            conn.execute("set transaction isolation level repeatable read, read only")
            return _count_tables(conn)
    except psycopg.Error as exc:
        raise _counting_failed(dbname or settings.database.dbname, exc) from None


@contextlib.contextmanager
def exported_row_counts(settings: Settings) -> Iterator[tuple[str, dict[str, int]]]:
    """Yield (snapshot name, row counts) from a transaction kept open until the block ends; pass the
    name to `pg_dump --snapshot` inside the block and the dump holds exactly the counted rows. The
    counts are taken in a thread while the block runs (pg_dump reading the same snapshot meanwhile, so
    counting adds no time of its own); the dict is complete when the block ends."""
    with pg.connect(settings.database) as conn:
        try:
            conn.execute("begin isolation level repeatable read, read only")
            name = conn.execute("select pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            raise _counting_failed(settings.database.dbname, exc) from None
        counts: dict[str, int] = {}
        failed: list[psycopg.Error] = []

        def count() -> None:
            try:
                counts.update(_count_tables(conn))
            except psycopg.Error as exc:
                failed.append(exc)

        counter = threading.Thread(target=count, name="row-counts", daemon=True)
        counter.start()
        try:
            yield name, counts
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.cancel()  # the snapshot failed anyway: do not finish counting
            raise
        finally:
            counter.join()
            with contextlib.suppress(psycopg.Error):
                conn.execute("rollback")
        if failed:
            raise _counting_failed(settings.database.dbname, failed[0])


def _counting_failed(dbname: str, exc: psycopg.Error) -> RollbackError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RollbackError(f"counting rows in {dbname}: {first}")


# -- the data tree ---------------------------------------------------------------------------------
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
    `create_archive(..., visit=listing.visit)` while a snapshot writes the archive (no second read),
    or by `archive_summary` from an existing archive. Kept compact (one tuple per member, a file's
    SHA-256 as 32 bytes), since the snapshot holds them all until the end."""

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


def archive_summary(archive: Path, listing: Path | None = None) -> dict:
    """Summary of what the (gzip or zstd) tar archive holds, read from the archive (TreeListing.finish)."""
    collected = TreeListing()
    with open(archive, "rb") as raw:
        codec = detect_codec(raw, archive.name)
        with decompressor(codec, raw) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                collected.visit(member, _hash_stream(tar.extractfile(member).read) if member.isfile() else None)
                tar.members.clear()  # keep memory flat on big trees
    return collected.finish(listing)


def _write_listing(dest: Path, lines: list[tuple]) -> None:
    """Written beside, then renamed: a listing that exists is complete (a plan reads it as the snapshot's).
    Lines go in walk order (path components compared one by one: "/" sorts before every other character)."""
    lines.sort(key=lambda line: line[0].replace("/", "\0"))
    partial = dest.with_name(f".{dest.name}.partial")
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


def write_counters(settings: Settings) -> dict:
    """pg_stat_user_tables' cumulative insert/update/delete counters per table, with what tells their
    epoch (the database's oid and stats reset time): a plan subtracts them from today's for cheap
    estimates of the writes since the snapshot."""
    with pg.connect(settings.database) as conn:
        oid, reset = conn.execute("select d.oid, s.stats_reset from pg_database d left join pg_stat_database s "
                                  "on s.datid = d.oid where d.datname = current_database()").fetchone()
        rows = conn.execute("select schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del from pg_stat_user_tables")
        tables = {f"{schema}.{name}": [ins, upd, dele] for schema, name, ins, upd, dele in rows}
    return {"database_oid": int(oid), "stats_reset": str(reset) if reset else None, "tables": tables}


def record(counts: dict[str, int], folder: Path, tree: TreeListing, counters: dict | None = None) -> dict:
    """The `stats` field a snapshot entry records; the data tree's file listing (collected while the
    archive was written) goes beside the archive as DATA_LISTING, read by the restore plan."""
    return {"tables": counts, "data": tree.finish(folder / DATA_LISTING),
            "data_listing": DATA_LISTING, "write_counters": counters}
