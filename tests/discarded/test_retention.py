"""The copies a discarded-writes report reads stay while the report is younger than PRE_RETENTION_DAYS,
whatever PRE_RETENTION_COUNT says; the report goes with its journal."""

from __future__ import annotations

import time

from rollback import cleanup, discarded, pg
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot


def test_copies_kept_while_their_report_is_young(settings):
    s = settings.with_overrides(pre_retention_count=0, pre_retention_days=1.0)
    snap = create_snapshot(s)
    with_report = run_restore_local(s, snap["id"], reason="one")["txn"]
    discarded.build_report(s, with_report)
    without = run_restore_local(s, snap["id"], reason="two")["txn"]
    pre_db, pre_tree = discarded.copies(s, {"txn": with_report, "marks": {}})

    report = cleanup.clean_pre_restore(s)
    assert without in report["copies_removed"] and with_report not in report["copies_removed"]
    assert pre_tree.is_dir() and pre_db in _databases(s)

    later = time.time() + 2 * 86400  # the report (and the journal) older than PRE_RETENTION_DAYS
    report = cleanup.clean_pre_restore(s, now=later)
    assert with_report in report["journals"] and not pre_tree.exists() and pre_db not in _databases(s)
    assert not discarded.report_dir(s, with_report).parent.exists()  # the report went with its journal


def _databases(settings) -> set[str]:
    with pg.connect_maintenance(settings.database) as conn:
        return {r[0] for r in conn.execute("select datname from pg_database")}
