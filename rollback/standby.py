"""Warm standby: the newest snapshot, already restored, waiting beside the live state.

After a snapshot, `prepare_standby` restores its dump into the database `<db>__standby` and extracts
its archive into a standby tree on the data dir's filesystem, both verified and tagged with the
snapshot id in BACKUP_DIR/standby.json. A restore of that snapshot then only renames: the db step
takes the standby database instead of running pg_restore, the data step takes the standby tree
instead of extracting. A missing, stale or altered standby is ignored and the cold path runs.

The heavy work runs without the service lock (restores stay possible meanwhile); only publishing
the result takes it, and a restore in progress makes the preparation discard its work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from psycopg import sql

from . import logbook, pg
from .archive import extract_archive, remove_tree
from .errors import LockHeld, RollbackError
from .fsutil import atomic_write_bytes, fsync_dir
from .ids import utc_now_iso
from .lock import ServiceLock
from .manifest import Manifest
from .proc import run
from .settings import Settings
from .steps.data import is_mount
from .verify import verify_artifacts

STANDBY_FILE = "standby.json"
TREE_NAME = ".rollback-standby"

Progress = Callable[[int, int, str], None]


def _quiet(done: int, total: int, message: str) -> None:
    return None


def standby_db_name(live: str, suffix: str = "__standby") -> str:
    return live[: 63 - len(suffix)] + suffix


def standby_tree(data_dir: Path, mounted: bool) -> Path:
    """Inside the data dir when it is a mount point (same filesystem), else beside it."""
    return data_dir / TREE_NAME if mounted else data_dir.parent / f".{data_dir.name}{TREE_NAME}"


def tree_digest(root: Path) -> str:
    """sha256 over every entry's path, type, mode, size, mtime and link target (no content reads):
    cheap enough to check at restore time, and any edit of the tree changes it."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            h.update(f"{os.path.relpath(path, root)}\0{st.st_mode:o}\0{size}\0{st.st_mtime_ns}\0{link}\n".encode())
    return h.hexdigest()


def _tag(entry: dict) -> str:
    return f"rollback standby of {entry['id']} dump sha256 {entry['artifacts']['db']['sha256']}"


@contextlib.contextmanager
def _preparing(settings: Settings) -> Iterator[None]:
    """One preparation at a time; a second one returns at once."""
    fd = os.open(settings.backup_dir / ".standby.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld("a standby is already being prepared") from None
            raise
        yield
    finally:
        os.close(fd)


def read_record(settings: Settings) -> dict | None:
    try:
        return json.loads((settings.backup_dir / STANDBY_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def prepare_standby(settings: Settings, snapshot_id: str, progress: Progress = _quiet) -> dict:
    """Build and publish the standby of `snapshot_id`; returns the record (or why it was skipped)."""
    entry = Manifest(settings.backup_dir).get(snapshot_id)
    live = settings.database.dbname
    mounted = is_mount(settings.data_base_dir)
    prep_db, prep_tree = standby_db_name(live, "__standby_prep"), Path(f"{standby_tree(settings.data_base_dir, mounted)}.prep")
    with _preparing(settings):
        progress(0, 4, f"verifying snapshot {snapshot_id}")
        verify_artifacts(settings, entry)
        try:
            progress(1, 4, f"restoring the dump into {prep_db}")
            _restore_db(settings, entry, prep_db)
            progress(2, 4, f"extracting the archive into {prep_tree}")
            remove_tree(prep_tree)
            art = entry["artifacts"]["data"]
            extract_archive(Path(settings.backup_dir / entry["id"] / art["file"]), prep_tree,
                            expected_sha256=art["sha256"], expected_size=art["size"],
                            max_bytes=art.get("tar_bytes") or art["size"] * 1000)
            progress(3, 4, "publishing the standby")
            record = _publish(settings, entry, prep_db, prep_tree, mounted)
        except BaseException:
            _drop(settings, prep_db)
            remove_tree(prep_tree)
            raise
    progress(4, 4, f"standby of {snapshot_id} ready")
    logbook.append(settings.rollback_log, logbook.format_event("standby ready", id=snapshot_id))
    return record


def _restore_db(settings: Settings, entry: dict, name: str) -> None:
    target = settings.database
    with pg.connect_maintenance(target) as conn:
        pg.drop_database(conn, name)
        pg.create_empty_database(conn, name, like=target.dbname)
        pg.copy_database_settings(conn, target.dbname, name)
    dump = settings.backup_dir / entry["id"] / entry["artifacts"]["db"]["file"]
    run(["pg_restore", "--exit-on-error", "--no-password", f"--jobs={settings.restore_jobs}", "--dbname", name,
         str(dump)], env=target.libpq_env(), timeout=settings.command_timeout_sec)
    got = pg.alembic_revision(target, name)
    if got != entry.get("alembic_revision"):
        raise RollbackError(f"standby database is at {got}, the snapshot at {entry.get('alembic_revision')}")


def _publish(settings: Settings, entry: dict, prep_db: str, prep_tree: Path, mounted: bool) -> dict:
    live = settings.database.dbname
    db, tree = standby_db_name(live), standby_tree(settings.data_base_dir, mounted)
    lock = ServiceLock(settings.backup_dir)
    with lock.held({"kind": "standby", "snapshot_id": entry["id"]}, wait_sec=30):
        if lock.active():
            raise LockHeld("a restore started meanwhile; this standby is discarded")
        discard_standby(settings)
        with pg.connect_maintenance(settings.database) as conn:
            pg.rename_database(conn, prep_db, db)
            # Nobody may connect (and change it) until a restore takes it.
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(db)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(db), sql.Literal(_tag(entry))))
        os.rename(prep_tree, tree)
        fsync_dir(tree.parent)
        record = {"snapshot_id": entry["id"], "database": db, "tree": str(tree), "mounted": mounted,
                  "tree_digest": tree_digest(tree), "prepared_at": utc_now_iso()}
        atomic_write_bytes(settings.backup_dir / STANDBY_FILE, json.dumps(record, indent=2).encode())
    return record


def usable_standby(settings: Settings, entry: dict) -> tuple[dict | None, str]:
    """(record, "ok") when the standby is this snapshot's and untouched, else (None, why not)."""
    record = read_record(settings)
    if not record:
        return None, "no standby prepared"
    if record.get("snapshot_id") != entry["id"]:
        return None, f"standby is of snapshot {record.get('snapshot_id')}, not {entry['id']}"
    tree = Path(record["tree"])
    if not tree.is_dir():
        return None, f"standby tree {tree} is missing"
    if tree_digest(tree) != record.get("tree_digest"):
        return None, "standby tree was modified after it was prepared"
    with pg.connect_maintenance(settings.database) as conn:
        row = conn.execute("select datallowconn, shobj_description(oid, 'pg_database') from pg_database "
                           "where datname = %s", (record["database"],)).fetchone()
    if row is None:
        return None, f"standby database {record['database']} is missing"
    if row[0] or row[1] != _tag(entry):
        return None, "standby database is not sealed with this snapshot's tag"
    return record, "ok"


def take_database(settings: Settings, record: dict, new_name: str) -> None:
    """Rename the standby database to `new_name` (the swap then proceeds as after a cold restore)."""
    with pg.connect_maintenance(settings.database) as conn:
        pg.rename_database(conn, record["database"], new_name)
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(new_name)))


def discard_standby(settings: Settings) -> None:
    """Drop the standby database and tree and forget the record (call under the service lock)."""
    record = read_record(settings)
    if record:
        _drop(settings, record.get("database") or standby_db_name(settings.database.dbname))
        if record.get("tree"):
            remove_tree(Path(record["tree"]))
    with contextlib.suppress(FileNotFoundError):
        (settings.backup_dir / STANDBY_FILE).unlink()


def forget(settings: Settings) -> None:
    """The standby was consumed by a restore: remove the record only."""
    with contextlib.suppress(FileNotFoundError):
        (settings.backup_dir / STANDBY_FILE).unlink()


def _drop(settings: Settings, name: str) -> None:
    with pg.connect_maintenance(settings.database) as conn:
        pg.drop_database(conn, name)
