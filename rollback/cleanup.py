"""Pre-restore retention: what finished restores kept for undo is removed by age and by count.

A restore keeps the state it replaced: the data tree as `DATA_BASE_DIR.pre-<txn>` (or
`DATA_BASE_DIR/.pre-<txn>/` on a mount point) and the database as `<db>__pre_<txn>`. Two rules:
- age: once its transaction is finished and older than PRE_RETENTION_DAYS, those copies and its
  journal go;
- count: only the copies of the PRE_RETENTION_COUNT newest finished transactions that still have
  copies are kept (each is a full database and data tree); older ones lose their copies, while their
  journals stay (with a note saying so) until the age rule removes them.
A restore whose discarded-writes report (rollback/discarded.py) is younger than PRE_RETENTION_DAYS keeps
its copies under both rules: the report reads them and carry-forward copies files back from them.
The transaction that owns the service is never touched, nor any unfinished one. Leftovers whose
journal is gone are aged and ranked by the timestamp in their txn id.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from . import logbook, pg
from .archive import remove_tree
from .discarded_summary import keeps_copies
from .ids import utc_now_iso
from .journal import FINAL_STATES, Journal
from .lock import ServiceLock
from .resources.data_tree import layout
from .resources.database import pre_database_name
from .settings import Settings

_TXN_IN_NAME = re.compile(r"\.pre-(?P<txn>txn-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6})$")
_DAY = 86400.0


def clean_pre_restore(settings: Settings, now: float | None = None) -> dict:
    """Remove what finished txns kept for undo: everything of those older than PRE_RETENTION_DAYS, and the
    copies of those beyond the PRE_RETENTION_COUNT newest."""
    cutoff = (time.time() if now is None else now) - settings.pre_retention_days * _DAY
    lock = ServiceLock(settings.backup_dir)
    with lock.held({"kind": "cleanup"}, wait_sec=5):
        active = (lock.active() or {}).get("txn")
        journals = {doc["txn"]: doc for doc in Journal(settings.backup_dir).all() if doc.get("txn")}
        expired = {txn for txn, doc in journals.items() if txn != active and _expired(doc, cutoff)
                   and not keeps_copies(settings, txn, cutoff)}
        orphans = {txn for txn in _txns_with_leftovers(settings)
                   if txn not in journals and txn != active and _txn_time(txn) < cutoff}
        report = {"journals": [], "trees": [], "databases": [], "copies_removed": []}
        for txn in sorted(expired | orphans):
            _remove_txn(settings, txn, report, has_journal=txn in expired)
        # A discarded-writes report younger than PRE_RETENTION_DAYS reads (and carry-forward copies
        # from) its copies: they stay, whatever the count.
        kept = {txn for txn in journals if keeps_copies(settings, txn, cutoff)}
        for txn in _beyond_count(settings, journals, active, done=expired | orphans | kept):
            _remove_copies_kept_by_count(settings, txn, report, has_journal=txn in journals)
    logbook.append(settings.rollback_log, logbook.format_event(
        "cleanup", journals=len(report["journals"]), trees=len(report["trees"]),
        databases=",".join(report["databases"]) or "none",
        copies_removed=",".join(report["copies_removed"]) or None))
    return report


def _beyond_count(settings: Settings, journals: dict, active: str | None, done: set[str]) -> list[str]:
    """Finished txns that still have copies, beyond the PRE_RETENTION_COUNT newest of them."""
    ranked = []
    for txn in _txns_with_leftovers(settings) - done - {active}:
        doc = journals.get(txn)
        if doc is None:
            ranked.append((_txn_time(txn), txn))
        elif doc.get("status") in FINAL_STATES:
            ranked.append((doc.get("finished_ts") or _iso_time(doc.get("finished_at") or doc.get("updated_at")), txn))
    ranked.sort(reverse=True)
    return [txn for _, txn in reversed(ranked[settings.pre_retention_count:])]  # oldest first


def _remove_copies_kept_by_count(settings: Settings, txn: str, report: dict, has_journal: bool) -> None:
    trees, databases = _remove_copies(settings, txn, report)
    report["copies_removed"].append(txn)
    rule = f"PRE_RETENTION_COUNT={settings.pre_retention_count}"
    logbook.append(settings.rollback_log, logbook.format_event(
        "cleanup", txn=txn, rule=rule, trees=",".join(trees) or "none", databases=",".join(databases) or "none"))
    if has_journal:
        journal = Journal(settings.backup_dir)
        journal.update(txn, pre_copies_removed={"at": utc_now_iso(), "rule": rule, "trees": trees,
                                                "databases": databases})
        journal.add_note(txn, f"the pre-restore copies of this restore were removed by cleanup ({rule}: only "
                              f"the newest restores keep theirs)")


def _expired(doc: dict, cutoff: float) -> bool:
    if doc.get("status") not in FINAL_STATES:
        return False
    return _iso_time(doc.get("finished_at") or doc.get("updated_at")) < cutoff


def _remove_txn(settings: Settings, txn: str, report: dict, has_journal: bool) -> None:
    _remove_copies(settings, txn, report)
    if has_journal:
        # Last: while the journal exists, a re-run still knows what belongs to this txn. Its
        # discarded-writes report (BACKUP_DIR/journal/<txn>/) is kept with it, and goes with it.
        shutil.rmtree(Journal(settings.backup_dir).dir / txn, ignore_errors=True)
        Journal(settings.backup_dir).path(txn).unlink(missing_ok=True)
        report["journals"].append(txn)


def _remove_copies(settings: Settings, txn: str, report: dict) -> tuple[list[str], list[str]]:
    """Remove the `.pre-<txn>` trees and `<db>__pre_<txn>` database; return what was removed."""
    trees, databases = [], []
    for tree in _pre_trees(settings, txn):
        if tree.exists():
            remove_tree(tree)
            trees.append(str(tree))
    pre_db = pre_database_name(settings.database.dbname, txn)
    with pg.connect_maintenance(settings.database) as conn:
        if pg.database_exists(conn, pre_db):
            pg.drop_database(conn, pre_db)
            databases.append(pre_db)
    report["trees"] += trees
    report["databases"] += databases
    return trees, databases


def _pre_trees(settings: Settings, txn: str) -> list[Path]:
    """Both layouts: a data dir that was a mount point then may not be one now."""
    return [layout(settings.data_base_dir, txn, mounted)[1] for mounted in (False, True)]


def _txns_with_leftovers(settings: Settings) -> set[str]:
    """Txn ids named by `.pre-<txn>` trees beside or inside DATA_BASE_DIR and by `<db>__pre_<txn>`."""
    data_dir = settings.data_base_dir
    found = set()
    for folder in (data_dir.parent, data_dir):
        for child in folder.iterdir() if folder.is_dir() else []:
            m = _TXN_IN_NAME.search(child.name)
            if m and child.name in (f"{data_dir.name}.pre-{m['txn']}", f".pre-{m['txn']}"):
                found.add(m["txn"])
    return found | _txns_with_pre_databases(settings)


def _txns_with_pre_databases(settings: Settings) -> set[str]:
    live = settings.database.dbname
    prefix = pre_database_name(live, "txn-00000000T000000Z-000000")[: -len("00000000t000000z_000000")]
    with pg.connect_maintenance(settings.database) as conn:
        names = [r[0] for r in conn.execute("select datname from pg_database where starts_with(datname, %s)",
                                            (prefix,))]
    txns = set()
    for name in names:
        m = re.fullmatch(r"(?P<d>[0-9]{8})t(?P<t>[0-9]{6})z_(?P<r>[0-9a-f]{6})", name[len(prefix):])
        if m:
            txns.add(f"txn-{m['d']}T{m['t']}Z-{m['r']}")
    return txns


def _txn_time(txn: str) -> float:
    return datetime.strptime(txn[4:20], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()


def _iso_time(value: str | None) -> float:
    if not value:
        return float("inf")  # no time recorded: never old enough
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
