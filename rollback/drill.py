"""Restore drills: prove a snapshot restores, and measure how long it takes, without touching production.

A drill restores a snapshot *beside* the live state, with the restore's own resource functions: the
dump into the scratch database `<db>__drill` (database.restore_into_new, as the swap strategy and the
warm standby do) and the archive into a scratch tree under BACKUP_DIR (data_tree.stage). It then checks
the copy the way /readyz checks production (READYZ_TABLES with their minimum rows, the Alembic revision
known to the deployed code, the users file valid JSON) and compares it with what the snapshot recorded
when it was taken (snapshot_stats: rows per table, file count, bytes and content hash of the tree).
Every phase is timed; `rto_sec` is the time from the start until the restored copy was proven (verify +
database + data + checks; the removal of the scratch copies is timed but not part of it). The result is
recorded in the snapshot's manifest entry (`drill`) and a failure alerts the webhook.

Drills hold no service lock: a restore or a snapshot that arrives during a drill starts at once. A
watcher polls the service lock; when a restore claims the service or a snapshot holds the lock, it ends
the drill's Postgres sessions (so a running pg_restore stops), the drill is abandoned, its scratch
copies are removed, and nothing is recorded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

import psycopg

from . import logbook, migrations_info, pg, snapshot_stats, sqlprobe, tree_index
from .archive import remove_tree
from .errors import LockHeld, RollbackError, SnapshotNotFound
from .ids import utc_now_iso
from .lock import ServiceLock, describe_holder, exclusive_or_refuse
from .manifest import Manifest
from .notify import send_alert
from .progress import Progress, Sink, as_progress
from .readiness import CheckFailed, check_json_file
from .resources import data_tree, database
from .settings import Settings
from .verify import verify_artifacts

DRILL_DB_SUFFIX = "__drill"
DRILL_TREE = ".drill-tree"
DRILL_LOCK = ".drill.lock"
PHASES = ("verify", "database", "data", "checks", "cleanup")
POLL_SEC = 0.2
# Holders of the service lock a drill gives way to; prune, cleanup and a standby being published hold
# it for moments only and leave the live state alone.
PREEMPTING_KINDS = ("restore", "snapshot", "reconcile")


class DrillAbandoned(LockHeld):
    """A restore or snapshot started during the drill; the drill stopped and removed its copies."""


def drill_db_name(settings: Settings) -> str:
    return database.side_database_name(settings.database.dbname, DRILL_DB_SUFFIX)


def drill_tree_path(settings: Settings) -> Path:
    return settings.backup_dir / DRILL_TREE


# -- who the drill gives way to ----------------------------------------------------------------------
def preempting_holder(settings: Settings) -> dict | None:
    """The restore or snapshot now running, or None. Reads the lock's records without taking the lock
    (both are written atomically); the flock is only probed, shared, for an instant."""
    lock = ServiceLock(settings.backup_dir)
    holder = lock.active() or lock.flock_holder()
    if holder is None:
        return None
    kind = holder.get("kind")
    return holder if kind in PREEMPTING_KINDS or kind is None else None


class _Watcher:
    """Polls `preempting_holder` in a thread; on a hit it ends the drill database's sessions, so the
    phase running stops soon, and remembers why."""

    def __init__(self, settings: Settings, db: str):
        self.settings, self.db = settings, db
        self.holder: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-watcher", daemon=True)

    def __enter__(self) -> "_Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SEC):
            try:
                holder = preempting_holder(self.settings)
            except (OSError, RollbackError):
                continue
            if holder is not None:
                self.holder = holder
                with contextlib.suppress(RollbackError), pg.connect_maintenance(self.settings.database) as conn:
                    pg.terminate_sessions(conn, self.db)
                return

    def check(self) -> None:
        """Between phases: ask now as well (a phase may end before the next poll)."""
        if self.holder is None:
            self.holder = preempting_holder(self.settings)
        if self.holder is not None:
            raise DrillAbandoned(f"drill abandoned: {describe_holder(self.holder)}", self.holder)


def _one_drill(settings: Settings):
    """One drill at a time on this host; a second one is refused at once."""
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    return exclusive_or_refuse(settings.backup_dir / DRILL_LOCK, "refused: another drill is running", {"kind": "drill"})


# -- the drill ---------------------------------------------------------------------------------------
def run_drill(settings: Settings, snapshot_ref: str = "latest", progress: Progress | Sink | None = None,
              record: bool = True) -> dict:
    """Drill one snapshot; returns {snapshot_id, at, ok, rto_sec, phases, error, checks}. Raises LockHeld
    when a restore or snapshot runs (or another drill), DrillAbandoned when one started meanwhile."""
    entry = Manifest.for_settings(settings).resolve(snapshot_ref)
    holder = preempting_holder(settings)
    if holder:
        raise LockHeld(f"drill refused: {describe_holder(holder)}", holder)
    progress = as_progress(progress).scoped("drill")
    with _one_drill(settings):
        result = _drill(settings, entry, progress)
    if record:
        _record(settings, result)
    return result


def _drill(settings: Settings, entry: dict, progress: Progress) -> dict:
    db, tree = drill_db_name(settings), drill_tree_path(settings)
    folder = settings.backup_dir / entry["id"]
    at = utc_now_iso()
    phases: dict[str, float] = {}
    checks: list[dict] = []
    error = None
    logbook.append(settings.rollback_log, logbook.format_event("drill start", id=entry["id"], db=db))
    _remove_scratch(settings, db, tree)  # what a killed drill left
    started = time.monotonic()
    try:
        with _Watcher(settings, db) as watcher:
            try:
                with _phase(phases, "verify", watcher):
                    progress(0, 5, f"verifying snapshot {entry['id']}")
                    verify_artifacts(settings, entry, scan_data=True)
                with _phase(phases, "database", watcher):
                    progress(1, 5, f"restoring the dump into {db}")
                    database.restore_into_new(settings, folder / entry["artifacts"]["db"]["file"], db,
                                              entry.get("alembic_revision"))
                with _phase(phases, "data", watcher):
                    progress(2, 5, f"extracting the archive into {tree}")
                    art = entry["artifacts"]["data"]
                    data_tree.stage(folder / art["file"], art, tree)
                with _phase(phases, "checks", watcher):
                    progress(3, 5, "checking the restored copy as /readyz would")
                    checks = check_restored(settings, entry, db, tree)
                failed = [c for c in checks if c["ok"] is False]
                if failed:
                    error = "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
            except DrillAbandoned:
                raise
            except RollbackError as exc:
                watcher.check()  # a failure caused by the watcher ending our sessions is an abandon
                error = f"{_failed_phase(phases)}: {exc}"
            except OSError as exc:
                watcher.check()
                error = f"{_failed_phase(phases)}: {exc.strerror or exc} ({exc.filename or ''})".replace(" ()", "")
            rto = round(time.monotonic() - started, 3)
    except DrillAbandoned as exc:  # the scratch copies go in `finally`
        logbook.append(settings.rollback_log, logbook.format_event("drill abandoned", id=entry["id"], why=str(exc)))
        raise
    finally:
        if "cleanup" not in phases:
            cleanup_started = time.monotonic()
            progress(4, 5, "removing the scratch copies")
            _remove_scratch(settings, db, tree)
            phases["cleanup"] = round(time.monotonic() - cleanup_started, 3)
    ok = error is None
    progress(5, 5, f"drill of {entry['id']} {'passed' if ok else 'FAILED'} in {rto:.1f} s")
    logbook.append(settings.rollback_log, logbook.format_event(
        "drill ok" if ok else "drill failed", id=entry["id"], rto_sec=rto, error=error))
    return {"snapshot_id": entry["id"], "at": at, "ok": ok, "rto_sec": rto if ok else None,
            "phases": phases, "error": error, "checks": checks}


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str, watcher: _Watcher) -> Iterator[None]:
    watcher.check()
    phases[name] = None  # marks the phase as started (see _failed_phase)
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - started, 3)
    watcher.check()


def _failed_phase(phases: dict) -> str:
    return next(reversed(phases), "drill")


def _remove_scratch(settings: Settings, db: str, tree: Path) -> None:
    database.drop_database(settings, db)
    remove_tree(tree)


# -- checks -----------------------------------------------------------------------------------------
def check_restored(settings: Settings, entry: dict, db: str, tree: Path) -> list[dict]:
    """The /readyz checks and the comparisons with the snapshot's record, on the restored copy; one
    {name, ok, detail} per check (ok None: skipped, and why)."""
    stats = entry.get("stats") or {}
    return [
        _check("tables", lambda: _check_tables(settings, db)),
        _check("alembic", lambda: _check_alembic(settings, entry, db)),
        _check("users_file", lambda: _check_users_file(settings, tree)),
        _check("row_counts", lambda: _compare_rows(settings, db, stats.get("tables"))),
        _check("data_tree", lambda: _compare_tree(settings, entry, tree)),
    ]


class _Skipped(Exception):
    pass


def _check(name: str, fn) -> dict:
    try:
        return {"name": name, "ok": True, "detail": fn()}
    except _Skipped as exc:
        return {"name": name, "ok": None, "detail": f"skipped: {exc}"}
    except (CheckFailed, RollbackError) as exc:
        return {"name": name, "ok": False, "detail": str(exc)}
    except psycopg.Error as exc:  # a query on the scratch copy failed: that is what the check found
        return {"name": name, "ok": False, "detail": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    except OSError as exc:
        return {"name": name, "ok": False, "detail": f"{exc.strerror or exc} ({exc.filename or ''})"}


def _check_tables(settings: Settings, db: str) -> str:
    """READYZ_TABLES with the very probes of the app's /readyz (rollback.sqlprobe), on the scratch copy."""
    if not settings.readyz_tables:
        raise _Skipped("no READYZ_TABLES configured")
    engine = sqlprobe.create_engine(settings.database.sqlalchemy_url(db))
    try:
        sqlprobe.with_connection(engine, lambda conn: [sqlprobe.check_table(conn, sqlprobe.TableCheck(name, minimum))
                                                       for name, minimum in settings.readyz_tables])
    finally:
        engine.dispose()
    return ", ".join(f"{n}>={m}" for n, m in settings.readyz_tables)


def _check_alembic(settings: Settings, entry: dict, db: str) -> str:
    got = pg.alembic_revision(settings.database, db)
    if got != entry.get("alembic_revision"):
        raise CheckFailed(f"restored database at {got}, the snapshot recorded {entry.get('alembic_revision')}")
    try:
        known = migrations_info.is_known_revision(settings, got)
    except Exception as exc:  # Alembic raises whatever importing a broken migration raised
        raise CheckFailed(f"cannot read the deployed migrations ({type(exc).__name__}: {exc})") from None
    if not known:
        raise CheckFailed(f"revision {got} is unknown to the deployed migrations ({settings.alembic_config})")
    return f"at {got}, known to the deployed code"


def _check_users_file(settings: Settings, tree: Path) -> str:
    if settings.readyz_users_file is None:
        raise _Skipped("READYZ_USERS_FILE=none")
    return check_json_file(tree / settings.readyz_users_file)


def _compare_rows(settings: Settings, db: str, recorded: dict | None) -> str:
    if recorded is None:
        raise _Skipped("the snapshot recorded no row counts (taken by an older version)")
    got = snapshot_stats.table_row_counts(settings, db)
    diffs = [f"{t}: missing (recorded {n} rows)" for t, n in sorted(recorded.items()) if t not in got]
    diffs += [f"{t}: {got[t]} rows, recorded {n}" for t, n in sorted(recorded.items()) if t in got and got[t] != n]
    diffs += [f"{t}: not in the snapshot's record" for t in sorted(set(got) - set(recorded))]
    if diffs:
        raise CheckFailed("; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else ""))
    return f"{len(got)} tables, {sum(got.values())} rows, as recorded"


def _compare_tree(settings: Settings, entry: dict, tree: Path) -> str:
    recorded = tree_index.recorded_summary(settings.backup_dir / entry["id"], entry)
    indexed_now = recorded is None
    if indexed_now:  # the index that follows the snapshot never ran: this proves the extraction only
        recorded = tree_index.ensure_index(settings, entry)
    if "unsafe" in recorded:
        raise CheckFailed(f"the snapshot's archive holds a member a restore refuses: {recorded['unsafe']}")
    got = tree_index.tree_summary(tree)
    diffs = [f"{k} {got[k]}, recorded {recorded.get(k)}" for k in ("files", "bytes", "tree_sha256")
             if got[k] != recorded.get(k)]
    if diffs:
        raise CheckFailed("; ".join(diffs))
    if indexed_now:
        return (f"{got['files']} files, {got['bytes']} bytes, tree hash as the archive's (indexed only now: the "
                f"archive is not compared with the index taken after the snapshot)")
    return f"{got['files']} files, {got['bytes']} bytes, tree hash as recorded"


# -- the record ---------------------------------------------------------------------------------------
def _record(settings: Settings, result: dict) -> None:
    record = {k: result[k] for k in ("at", "ok", "rto_sec", "phases", "error")}
    try:
        Manifest.for_settings(settings).update(result["snapshot_id"], drill=record)
    except SnapshotNotFound:  # pruned meanwhile: nothing to attach the result to, nor to alert about
        logbook.append(settings.rollback_log, logbook.format_event(
            "drill unrecorded", id=result["snapshot_id"], why="snapshot pruned meanwhile"))
        return
    if not result["ok"]:
        send_alert(settings, f"Restore drill FAILED for snapshot {result['snapshot_id']}: {result['error']} "
                             f"(the snapshot may not restore; see `python -m manage.rollback drill --snapshot "
                             f"{result['snapshot_id']}`)")


def snapshots_to_drill(settings: Settings) -> list[str]:
    """For the schedule: every snapshot never drilled, newest first; when all were, the newest again
    (proof that it still restores today)."""
    entries = Manifest.for_settings(settings).entries()
    undrilled = [e["id"] for e in reversed(entries) if not e.get("drill")]
    return undrilled or ([entries[-1]["id"]] if entries else [])
