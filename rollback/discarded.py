"""What a successful restore discarded: the replaced state compared with the restored one.

A restore keeps what it replaced (`<db>__pre_<txn>`, `DATA_BASE_DIR.pre-<txn>`). This module compares
them with the restored database and tree and writes the difference under the transaction, in
`BACKUP_DIR/journal/<txn>/discarded/`:
- `summary.json`: the report's state (pending, running, done, failed) and, when done, the counts per table
  and for the data tree;
- `<schema>.<table>.jsonl`: one line per row written after the snapshot, `{"op": "insert"|"update"|"delete",
  "key": {...}, "row": {...}}` (`row` is the discarded version for insert/update, the restored one for a
  delete; an update also carries `before`, the restored version);
- `files.jsonl`: the data tree's files `added`, `changed`, `removed` since the snapshot.

Tables are compared on their primary key over the columns both sides have, and the trees file by file,
both streamed with bounded memory (rollback/diff/).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psycopg

from . import logbook, pg
from .diff.tables import compare_databases
from .diff.tree import compare_trees
from .errors import LockHeld, RollbackError
from .fsutil import atomic_write_bytes, fsync_dir
from .manifest import ensure_private_dir
from .ids import utc_now_iso, validate_txn_id
from .journal import Journal, is_success
from .lock import ServiceLock, describe_holder
from .progress import Progress, Sink, as_progress
from .resources.data_tree import layout
from .resources.database import pre_database_name
from .settings import Settings
from .discarded_summary import (  # noqa: F401  (re-exported: callers name the report's records here)
    DONE, FAILED, FILES, PENDING, RUNNING, SUMMARY, ReportNotFound, report_json, describe, keeps_copies, load_summary,
    mark_pending, read_lines, report_dir, require_summary, table_entry, write_summary)

def copies(settings: Settings, doc: dict) -> tuple[str, Path]:
    """(database, tree) the restore kept of the state it replaced, named as the restore steps name them."""
    marks = doc.get("marks") or {}
    database = marks.get("db_pre_copy") or pre_database_name(settings.database.dbname, doc["txn"])
    tree = layout(settings.data_base_dir, doc["txn"], bool(marks.get("data_mounted")))[1]
    return database, tree


RESTORED_MARK = "db_restored_xid"


def mark_restored(step) -> None:
    """Called by the db step once the restored database is live: record the first transaction id
    after that moment, so the report can tell the rows the app wrote into the restored database
    before the report ran (they are not writes the restore discarded). Best effort: without the mark
    the report compares as if nothing had been written since."""
    try:
        with pg.connect(step.settings.database) as conn:
            xmax = conn.execute("select pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0]
        step.mark(RESTORED_MARK, int(xmax))
    except (RollbackError, psycopg.Error) as exc:
        logbook.rollback_event(step.settings.rollback_log, step.txn, "db", "restored_xid_not_recorded", error=str(exc))


# -- the report -------------------------------------------------------------------------------
def build_report(settings: Settings, txn: str, progress: Progress | Sink | None = None) -> dict:
    """Compare the replaced database and tree of the successful restore `txn` with the restored ones;
    write the report and return its summary. Re-running replaces the previous report."""
    progress = as_progress(progress).scoped("discarded")
    doc = Journal(settings.backup_dir).load(validate_txn_id(txn))
    if not is_success(doc["status"]):
        raise RollbackError(f"restore {txn} is {doc['status']}: only a successful restore has a discarded-writes report")
    _check_still_restored(settings, doc)
    started, t0 = utc_now_iso(), time.time()
    write_summary(settings, txn, {"txn": txn, "status": RUNNING, "started_at": started})
    work = report_dir(settings, txn).with_name("discarded.tmp")
    shutil.rmtree(work, ignore_errors=True)
    ensure_private_dir(work)
    pre_db, pre_tree = copies(settings, doc)
    summary = {"txn": txn, "snapshot_id": doc.get("snapshot_id"), "status": RUNNING, "started_at": started,
               "replaced_database": pre_db, "replaced_tree": str(pre_tree), "notes": []}
    try:
        summary["tables"] = compare_databases(settings, pre_db, settings.database.dbname, work,
                                              progress.fraction(0, 0.8), summary["notes"],
                                              restored_xid=(doc.get("marks") or {}).get(RESTORED_MARK))
        summary["files"] = compare_trees(pre_tree, settings.data_base_dir, work / FILES, progress.fraction(0.8, 0.2),
                                         summary["notes"])
    except (RollbackError, OSError, psycopg.Error) as exc:
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shutil.rmtree(work, ignore_errors=True)
        write_summary(settings, txn, {"txn": txn, "status": FAILED, "started_at": started, "error": error})
        logbook.rollback_event(settings.rollback_log, txn, "discarded", "failed", error=error)
        raise RollbackError(f"discarded-writes report of {txn} failed: {error}") from None
    summary["totals"] = _totals(summary["tables"])
    summary.update(status=DONE, finished_at=utc_now_iso(), finished_ts=time.time(),
                   duration_sec=round(time.time() - t0, 3))
    atomic_write_bytes(work / SUMMARY, report_json(summary).encode())
    final = report_dir(settings, txn)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(work, final)
    fsync_dir(final.parent)
    totals, files = summary["totals"], summary["files"]
    logbook.rollback_event(settings.rollback_log, txn, "discarded", "ok", inserted=totals["insert"],
                           updated=totals["update"], deleted=totals["delete"], files_added=files["added"],
                           files_changed=files["changed"], files_removed=files["removed"],
                           duration_sec=f"{summary['duration_sec']:.1f}")
    progress(1, 1, f"report written to {final}")
    return summary


def _check_still_restored(settings: Settings, doc: dict) -> None:
    """The comparison reads the live database as `doc`'s restore left it: refuse once another restore
    has replaced it, or while one runs."""
    active = ServiceLock(settings.backup_dir).active()
    if active:
        raise LockHeld(f"refused: {describe_holder(active)}", active)
    later = [d["txn"] for d in Journal(settings.backup_dir).all() if d.get("txn") != doc["txn"]
             and is_success(d.get("status")) and (d.get("finished_ts") or 0) > (doc.get("finished_ts") or 0)]
    if later:
        raise RollbackError(f"restore {later[-1]} ran after {doc['txn']}: the live database is no longer the one "
                            f"{doc['txn']} restored, so what it discarded can no longer be told apart")


def _totals(tables: list[dict]) -> dict:
    totals = {"insert": 0, "update": 0, "delete": 0, "tables_changed": 0}
    for table in tables:
        if table["status"] in ("compared", "only_in_replaced"):
            for op in ("insert", "update", "delete"):
                totals[op] += table[op]
            totals["tables_changed"] += bool(table["insert"] or table["update"] or table["delete"])
    return totals
