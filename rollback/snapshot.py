"""Snapshot: dump + data archive + revisions, made visible only when complete.

The dump (pg_dump: the server's and pg_dump's CPU) and the archive (tar + zstd: the disk and the
other core) run at the same time, each in a thread streaming its child's output through a hash into
its file (`proc.run_both`): the snapshot takes about as long as the longer of the two.

Order (restic's rule: the record is written last): write into BACKUP_DIR/.tmp-<id>, fsync every
file, rename the folder to BACKUP_DIR/<id>, fsync BACKUP_DIR, then add the manifest entry.
A crash at any point leaves either nothing visible or an unrecorded folder; both are removed by
`clean_leftovers` at the start of the next run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import __version__, logbook, migrations_info, pg, snapshot_stats
from .errors import ConfigError, LockHeld, PreflightFailed, RollbackError
from .fsutil import atomic_write_bytes, fsync_dir
from .ids import SNAPSHOT_ID_RE, new_snapshot_id, utc_now_iso
from .lock import ServiceLock, describe_holder
from .manifest import Manifest
from .progress import Progress, Sink, as_progress
from .resources import data_tree
from .resources.code import strategy_for
from .resources.database import DUMP_FILE, dump_database
from .proc import SharedSink, run_both
from .settings import Settings

TMP_PREFIX = ".tmp-"
def clean_leftovers(settings: Settings, manifest: Manifest) -> list[str]:
    """Remove unfinished temp folders and folders the manifest does not record. Call under the lock."""
    recorded = {e["id"] for e in manifest.entries()}
    removed = []
    for child in settings.backup_dir.iterdir() if settings.backup_dir.exists() else []:
        if not child.is_dir() or child.is_symlink():
            continue
        unfinished = child.name.startswith(TMP_PREFIX)
        unrecorded = SNAPSHOT_ID_RE.fullmatch(child.name) and child.name not in recorded
        if unfinished or unrecorded:
            shutil.rmtree(child)
            removed.append(child.name)
    if removed:
        fsync_dir(settings.backup_dir)
        logbook.append(settings.rollback_log, logbook.format_event("backup cleanup", removed=",".join(removed)))
    return removed


def create_snapshot(settings: Settings, notes: str = "", progress: Progress | Sink | None = None,
                    snapshot_id: str | None = None) -> dict:
    """Take a complete snapshot and record it; raises LockHeld when a restore or snapshot runs.
    Progress is reported for the steps database, data and record."""
    snapshot_id = snapshot_id or new_snapshot_id()
    manifest = Manifest.for_settings(settings)
    lock = ServiceLock(settings.backup_dir)
    # A short wait rides over prune, cleanup or a standby being published; a restore still refuses.
    with lock.held({"kind": "snapshot", "snapshot_id": snapshot_id}, wait_sec=10):
        active = lock.active()
        if active:
            raise LockHeld(f"refused: {describe_holder(active)}", active)
        clean_leftovers(settings, manifest)
        return _take(settings, manifest, snapshot_id, notes, as_progress(progress))


def _take(settings: Settings, manifest: Manifest, snapshot_id: str, notes: str, progress: Progress) -> dict:
    if not settings.data_base_dir.is_dir():
        raise RollbackError(f"DATA_BASE_DIR {settings.data_base_dir} is not a directory")
    created_at = utc_now_iso()
    logbook.append(settings.rollback_log, logbook.format_event("backup start", id=snapshot_id, notes=notes))
    tmp = settings.backup_dir / f"{TMP_PREFIX}{snapshot_id}"
    final = settings.backup_dir / snapshot_id
    try:
        app_revision, dirty = strategy_for(settings).current_revision()
        alembic_revision = pg.alembic_revision(settings.database)
        check_restorable_revision(settings, alembic_revision)
        tmp.mkdir(mode=0o700)

        (db_art, row_counts), data_art = _dump_and_archive(settings, tmp, progress)

        progress.report("record", 0, 1, "recording the snapshot")
        entry = {
            "id": snapshot_id,
            "created_at": created_at,
            "completed_at": utc_now_iso(),
            "notes": notes,
            "app_revision": app_revision,
            "app_dirty": dirty,
            "alembic_revision": alembic_revision,
            "database": settings.database.dbname,
            "data_dir": str(settings.data_base_dir),
            "artifacts": {"db": db_art, "data": data_art},
            "stats": snapshot_stats.record(row_counts, snapshot_stats.write_counters(settings)),
            "ready_check": None,
            "verified": {"at": created_at, "ok": True},
            "tool_version": __version__,
        }
        # The folder describes itself: with only BACKUP_DIR an operator can restore by hand.
        atomic_write_bytes(tmp / "snapshot.json", json.dumps(entry, indent=2, ensure_ascii=False).encode())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(settings.backup_dir)
        manifest.add(entry)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists() and not any(e["id"] == snapshot_id for e in _safe_entries(manifest)):
            shutil.rmtree(final, ignore_errors=True)
        logbook.append(settings.rollback_log, logbook.format_event(
            "backup failed", id=snapshot_id, error=str(exc) or type(exc).__name__))
        if isinstance(exc, OSError) and not isinstance(exc, RollbackError):
            raise RollbackError(f"snapshot {snapshot_id} failed: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})".rstrip(" ()")) from None
        raise
    progress.report("record", 1, 1, f"snapshot {snapshot_id} complete")
    logbook.append(settings.rollback_log, logbook.format_event(
        "backup complete", id=snapshot_id, app_revision=app_revision[:12], alembic=alembic_revision,
        db_bytes=db_art["size"], data_bytes=data_art["size"]))
    return entry


def _dump_and_archive(settings: Settings, tmp: Path, progress: Progress) -> tuple[tuple[dict, dict], dict]:
    """pg_dump and the data archive at the same time; the first failure stops the other (its child is
    killed at its next chunk) and is raised once both have ended, so nothing still writes into tmp.
    Returns ((dump artifact, row counts), data artifact)."""
    shared = SharedSink(progress.sink)

    def checked(step: str, check) -> Progress:
        return Progress(lambda *report: (check(), shared(*report)), step)

    def dump(check) -> tuple[dict, dict]:
        db_progress = checked("database", check)
        db_progress(0, 1, "pg_dump -Fc")
        with snapshot_stats.exported_row_counts(settings) as (pg_snapshot, row_counts):
            art = dump_database(settings, tmp / DUMP_FILE, snapshot=pg_snapshot,
                                progress=lambda n: db_progress(0, 1, f"pg_dump: {n >> 20} MiB written"))
        db_progress(1, 1, f"dump {art['size']} bytes")
        return art, row_counts

    def archive(check) -> dict:
        data_progress = checked("data", check)
        data_progress(0, 1, f"archiving {settings.data_base_dir}")
        art = data_tree.archive_for_snapshot(settings, tmp, data_progress)
        data_progress(1, 1, f"archive {art['size']} bytes")
        return art

    return run_both(dump, archive)


def check_restorable_revision(settings: Settings, revision: str | None) -> None:
    """Refuse, before anything is dumped, a snapshot whose restore the preflight would refuse: the
    deployed migrations must be readable and know the database's Alembic revision."""
    try:
        migrations_info.code_heads(settings)
    except ConfigError as exc:
        raise ConfigError(f"snapshot refused: {exc} (a restore reads the deployed migrations)") from None
    except RollbackError as exc:
        raise PreflightFailed(f"snapshot refused: cannot read the deployed migrations: {exc}") from None
    except Exception as exc:  # a broken migration file: Alembic raises whatever importing it raised
        raise PreflightFailed(f"snapshot refused: cannot read the migrations of {settings.alembic_config} "
                              f"({type(exc).__name__}: {exc})") from None
    if not migrations_info.is_known_revision(settings, revision):
        raise PreflightFailed(f"snapshot refused: the database is at Alembic revision {revision}, unknown to the "
                              f"deployed migrations ({settings.alembic_config}); a restore would refuse this "
                              f"snapshot. Deploy code that has the revision, or fix ALEMBIC_CONFIG")


def _safe_entries(manifest: Manifest) -> list[dict]:
    try:
        return manifest.entries()
    except RollbackError:
        return []
