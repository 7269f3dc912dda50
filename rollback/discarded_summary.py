"""The discarded-writes report's records on disk, apart from the comparison that makes them
(rollback/discarded.py): where a report lives, its state, and the sentence an alert quotes. The
canary, cleanup and the CLI read these where psycopg may be absent (the `rollback` command in the
app's own virtualenv), so nothing here touches a database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .errors import RollbackError
from .fsutil import atomic_write_bytes
from .ids import utc_now_iso, validate_txn_id
from .journal import Journal
from .manifest import ensure_private_dir
from .settings import Settings

SUMMARY = "summary.json"
FILES = "files.jsonl"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
OPS = ("insert", "update", "delete")  # what a report line records, and what carry-forward re-applies


class ReportNotFound(RollbackError):
    """No discarded-writes report for this transaction (bad input for the adapters)."""


def report_dir(settings: Settings, txn: str) -> Path:
    return settings.backup_dir / "journal" / validate_txn_id(txn) / "discarded"


def load_summary(settings: Settings, txn: str) -> dict | None:
    """The report's summary.json, or None when no report was ever requested for `txn`."""
    try:
        return json.loads((report_dir(settings, txn) / SUMMARY).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"txn": txn, "status": FAILED, "error": "summary.json is unreadable"}


def require_summary(settings: Settings, txn: str) -> dict:
    summary = load_summary(settings, txn)
    if summary is None:
        Journal(settings.backup_dir).load(txn)  # "no journal for transaction ..." when the txn is unknown
        raise ReportNotFound(f"no discarded-writes report for {txn} (it is made after a successful restore; "
                             f"python -m manage.rollback discarded {txn} --build makes it now)")
    return summary


def mark_pending(settings: Settings, txn: str) -> None:
    """Record that the report was requested (before the task is sent), unless one exists already."""
    if load_summary(settings, txn) is None:
        write_summary(settings, txn, {"txn": txn, "status": PENDING, "requested_at": utc_now_iso()})


def keeps_copies(settings: Settings, txn: str, cutoff: float) -> bool:
    """True while the copies of `txn` are still needed: its report is pending or running, or was made
    after `cutoff` (the reports read them; carry-forward copies files back from them)."""
    summary = load_summary(settings, txn)
    if summary is None:
        return False
    if summary.get("status") == DONE:
        return float(summary.get("finished_ts") or 0) >= cutoff
    try:  # pending, running or failed: as old as its last change (a report whose worker died ages too)
        return (report_dir(settings, txn) / SUMMARY).stat().st_mtime >= cutoff
    except FileNotFoundError:
        return False


def write_summary(settings: Settings, txn: str, summary: dict) -> None:
    folder = report_dir(settings, txn)
    ensure_private_dir(folder)
    atomic_write_bytes(folder / SUMMARY, report_json(summary).encode())


def report_json(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def read_lines(path: Path) -> Iterator[dict]:
    """The records of a report's JSON Lines file, one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def table_entry(summary: dict, table: str) -> dict:
    """The summary's entry for `table` ("users" means "public.users")."""
    wanted = table if "." in table else f"public.{table}"
    for entry in summary.get("tables") or []:
        if entry["table"] == wanted:
            return entry
    raise ReportNotFound(f"table {table} is not in the discarded-writes report of {summary['txn']}")


def describe(summary: dict | None, txn: str) -> str:
    """One sentence for an alert: what the restore discarded and where it is kept."""
    hint = f"see `python -m manage.rollback discarded {txn}`"
    if not summary or summary.get("status") != DONE:
        state = (summary or {}).get("status") or "not made"
        return f"The discarded-writes report is {state}: {hint}."
    per_table = [f"{t['insert'] + t['update'] + t['delete']} {t['table'].removeprefix('public.')}"
                 for t in summary["tables"] if t["status"] in ("compared", "only_in_replaced")
                 and (t["insert"] or t["update"] or t["delete"])]
    totals, files = summary["totals"], summary["files"]
    rows = (f"{', '.join(per_table)} row(s) ({totals['insert']} inserted, {totals['update']} updated, "
            f"{totals['delete']} deleted)") if per_table else "no row"
    return (f"{rows} and {files['added']} file(s) added ({files['changed']} changed, {files['removed']} removed) "
            f"after the snapshot are kept in database {summary['replaced_database']} and "
            f"{summary['replaced_tree']} — {hint}.")
