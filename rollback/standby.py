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
import json
import os
from pathlib import Path

from psycopg import sql

from . import logbook, pg
from .archive import remove_tree
from .errors import LockHeld, RollbackError
from .fsutil import atomic_write_bytes, fsync_dir
from .ids import utc_now_iso
from .lock import ServiceLock, exclusive_or_refuse
from .manifest import Manifest
from .progress import Progress, Sink, as_progress
from .resources import data_tree, database
from .settings import Settings
from .tree_seal import SEAL_KIND, tree_digest
from .verify import verify_artifacts

STANDBY_FILE = "standby.json"


def standby_db_name(live: str, suffix: str = "__standby") -> str:
    return database.side_database_name(live, suffix)


def _tag(entry: dict) -> str:
    return f"rollback standby of {entry['id']} dump sha256 {entry['artifacts']['db']['sha256']}"


def _preparing(settings: Settings):
    """One preparation at a time; a second one returns at once."""
    return exclusive_or_refuse(settings.backup_dir / ".standby.lock", "a standby is already being prepared")


def read_record(settings: Settings) -> dict | None:
    try:
        return json.loads((settings.backup_dir / STANDBY_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def prepare_standby(settings: Settings, snapshot_id: str, progress: Progress | Sink | None = None) -> dict:
    """Build and publish the standby of `snapshot_id`; returns the record (or why it was skipped).
    Progress is reported as the step `standby`."""
    progress = as_progress(progress).scoped("standby")
    entry = Manifest.for_settings(settings).get(snapshot_id)
    folder = settings.backup_dir / entry["id"]
    mounted = data_tree.is_mount(settings.data_base_dir)
    prep_db = standby_db_name(settings.database.dbname, "__standby_prep")
    prep_tree = Path(f"{data_tree.standby_tree_path(settings.data_base_dir, mounted)}.prep")
    with _preparing(settings):
        progress(0, 4, f"verifying snapshot {snapshot_id}")
        verify_artifacts(settings, entry)
        try:
            progress(1, 4, f"restoring the dump into {prep_db}")
            database.restore_into_new(settings, folder / entry["artifacts"]["db"]["file"], prep_db,
                                      entry.get("alembic_revision"))
            progress(2, 4, f"extracting the archive into {prep_tree}")
            art = entry["artifacts"]["data"]
            data_tree.stage(folder / art["file"], art, prep_tree)
            progress(3, 4, "publishing the standby")
            # Sealed before the rename: the digest covers what is under the root, not the root's path.
            record = _publish(settings, entry, prep_db, prep_tree, mounted, tree_digest(prep_tree))
        except BaseException:
            database.drop_database(settings, prep_db)
            remove_tree(prep_tree)
            raise
    progress(4, 4, f"standby of {snapshot_id} ready")
    logbook.append(settings.rollback_log, logbook.format_event("standby ready", id=snapshot_id))
    return record


def _publish(settings: Settings, entry: dict, prep_db: str, prep_tree: Path, mounted: bool, digest: str) -> dict:
    live = settings.database.dbname
    db, tree = standby_db_name(live), data_tree.standby_tree_path(settings.data_base_dir, mounted)
    lock = ServiceLock(settings.backup_dir)
    with lock.held({"kind": "standby", "snapshot_id": entry["id"]}, wait_sec=30):
        if lock.active():
            raise LockHeld("a restore started meanwhile; this standby is discarded")
        discard_standby(settings)
        with pg.connect_maintenance(settings.database) as conn:
            pg.rename_database(conn, prep_db, db)
            # Nobody may connect (and change it) until a restore takes it.
            database.set_connections_allowed(conn, db, False)
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(db), sql.Literal(_tag(entry))))
        os.rename(prep_tree, tree)
        fsync_dir(tree.parent)
        record = {"snapshot_id": entry["id"], "database": db, "tree": str(tree), "mounted": mounted,
                  "tree_digest": digest, "tree_seal": SEAL_KIND, "prepared_at": utc_now_iso()}
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
    if record.get("tree_seal") != SEAL_KIND:
        return None, "standby tree was sealed by another version of the service"
    try:
        if tree_digest(tree) != record.get("tree_digest"):
            return None, "standby tree was modified after it was prepared"
    except RollbackError as exc:
        return None, f"standby tree cannot be checked ({exc})"
    with pg.connect_maintenance(settings.database) as conn:
        row = conn.execute("select datallowconn, shobj_description(oid, 'pg_database') from pg_database "
                           "where datname = %s", (record["database"],)).fetchone()
    if row is None:
        return None, f"standby database {record['database']} is missing"
    if row[0] or row[1] != _tag(entry):
        return None, "standby database is not sealed with this snapshot's tag"
    return record, "ok"


def discard_standby(settings: Settings) -> None:
    """Drop the standby database and tree and forget the record (call under the service lock)."""
    record = read_record(settings)
    if record:
        database.drop_database(settings, record.get("database") or standby_db_name(settings.database.dbname))
        if record.get("tree"):
            remove_tree(Path(record["tree"]))
    with contextlib.suppress(FileNotFoundError):
        (settings.backup_dir / STANDBY_FILE).unlink()


def forget(settings: Settings) -> None:
    """The standby was consumed by a restore: remove the record only."""
    with contextlib.suppress(FileNotFoundError):
        (settings.backup_dir / STANDBY_FILE).unlink()
