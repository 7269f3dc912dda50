"""Housekeeping on a real `celery -A tasks beat` schedule (2 s instead of hourly) run by a real worker:
retention keeps exactly what the rules say, and what old restores kept for undo is removed."""

from __future__ import annotations

import os

import psycopg
import pytest

from rollback.cleanup import clean_pre_restore
from rollback.journal import Journal
from rollback.manifest import Manifest
from rollback.restore import begin_restore
from rollback.resources.data_tree import layout
from rollback.resources.database import pre_database_name
from rollback.snapshot import create_snapshot
from tests.conftest import PG_ADMIN
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.slow

OLD_TXN, ORPHAN_TXN = "txn-20200101T000000Z-aaaaaa", "txn-20200102T000000Z-bbbbbb"
RECENT_TXN = "txn-20991231T000000Z-cccccc"


def finished_restore(settings, txn: str, finished_at: str | None = None, db_copy: bool = False) -> None:
    """What a finished restore leaves: its journal, the parked data tree and (optionally) the db copy."""
    journal = Journal(settings.backup_dir)
    journal.create(txn, snapshot_id="20200101T000000Z-000000", reason="test")
    journal.finish(txn, "succeeded")
    if finished_at:
        journal.update(txn, finished_at=finished_at)
    park(settings, txn, db_copy)


def park(settings, txn: str, db_copy: bool) -> None:
    tree = layout(settings.data_base_dir, txn, mounted=False)[1]
    (tree / "uploads").mkdir(parents=True)
    (tree / "uploads" / "old.bin").write_bytes(os.urandom(1024))
    (tree / "uploads").chmod(0o500)  # archived modes may forbid deletion: cleanup must cope
    if db_copy:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pre_database_name(settings.database.dbname, txn)}"')


def databases(settings) -> set[str]:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return {r[0] for r in conn.execute("select datname from pg_database where starts_with(datname, %s)",
                                           (settings.database.dbname,))}


def test_beat_prunes_and_cleans_on_schedule(settings, live_env, celery_processes):
    live_env.update(BACKUP_RETENTION="2", BACKUP_PRUNE_SCHEDULE="2", PRE_RETENTION_DAYS="1")
    celery_processes("worker")  # before the restore below is admitted: it must not reconcile it
    s1, s2, s3, s4, s5 = (create_snapshot(settings, notes=f"n{i}")["id"] for i in range(1, 6))
    Manifest(settings.backup_dir).update(s2, ready_check={"status": "ok", "at": "x", "deploy_id": "d"})
    active = begin_restore(settings, s1, reason="in use")["txn"]  # s1 is in use
    finished_restore(settings, OLD_TXN, finished_at="2020-01-01T00:00:00Z", db_copy=True)
    park(settings, ORPHAN_TXN, db_copy=True)  # its journal is long gone
    finished_restore(settings, RECENT_TXN)

    beat = celery_processes("beat")
    log = settings.rollback_log
    wait_for(lambda: log.exists() and "prune removed=" in log.read_text() and "cleanup journals=" in log.read_text(),
             timeout=60, interval=0.2, what=f"prune and cleanup lines ({beat.log})")

    # Retention 2 keeps s4 and s5; s2 is the newest ready snapshot; s1 belongs to the active restore.
    assert [e["id"] for e in Manifest(settings.backup_dir).entries()] == [s1, s2, s4, s5]
    assert not (settings.backup_dir / s3).exists() and (settings.backup_dir / s1).is_dir()
    remaining = {j["txn"] for j in Journal(settings.backup_dir).all()}
    assert remaining == {active, RECENT_TXN}
    for txn, kept in ((OLD_TXN, False), (ORPHAN_TXN, False), (RECENT_TXN, True)):
        assert layout(settings.data_base_dir, txn, mounted=False)[1].exists() is kept, txn
    live = settings.database.dbname
    assert pre_database_name(live, OLD_TXN) not in databases(settings)
    assert pre_database_name(live, ORPHAN_TXN) not in databases(settings)
    assert "beat: Starting" in beat.log.read_text()


def test_cleanup_never_touches_the_active_or_an_unfinished_restore(settings):
    s = settings.with_overrides(pre_retention_days=0.0)
    snap = create_snapshot(s)["id"]
    active = begin_restore(s, snap, reason="running")["txn"]
    park(s, active, db_copy=True)
    unfinished = "txn-20200103T000000Z-dddddd"
    Journal(s.backup_dir).create(unfinished, snapshot_id=snap, reason="crashed")
    park(s, unfinished, db_copy=False)
    finished_restore(s, OLD_TXN, db_copy=True)

    report = clean_pre_restore(s)

    assert report["journals"] == [OLD_TXN]
    assert report["databases"] == [pre_database_name(s.database.dbname, OLD_TXN)]
    assert {j["txn"] for j in Journal(s.backup_dir).all()} == {active, unfinished}
    assert layout(s.data_base_dir, active, mounted=False)[1].exists()
    assert layout(s.data_base_dir, unfinished, mounted=False)[1].exists()
    assert pre_database_name(s.database.dbname, active) in databases(s)
    assert "cleanup journals=1 trees=1" in s.rollback_log.read_text()


def test_cleanup_removes_the_pre_tree_of_a_mount_point_layout(settings):
    s = settings.with_overrides(pre_retention_days=0.0)
    finished_restore(s, OLD_TXN)
    inside = layout(s.data_base_dir, OLD_TXN, mounted=True)[1]
    inside.mkdir()
    (inside / "users.json").write_text("[]")
    report = clean_pre_restore(s)
    assert not inside.exists() and str(inside) in report["trees"]
