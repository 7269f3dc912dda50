"""PRE_RETENTION_COUNT: after real restores, cleanup keeps the database and data-tree copies of only the
N newest finished restores; older journals stay (saying their copies were removed); the active and
unfinished restores are never touched."""

from __future__ import annotations

import os

import psycopg

from rollback.cleanup import clean_pre_restore
from rollback.journal import Journal
from rollback.restore import begin_restore, run_restore_local
from rollback.settings import Settings
from rollback.resources.data_tree import layout
from rollback.resources.database import pre_database_name
from rollback.snapshot import create_snapshot
from tests.conftest import PG_ADMIN


def _databases(settings) -> set[str]:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return {r[0] for r in conn.execute("select datname from pg_database where starts_with(datname, %s)",
                                           (settings.database.dbname,))}


def _copies(settings, txn: str) -> tuple[bool, bool]:
    """(pre tree exists, pre database exists)."""
    tree = layout(settings.data_base_dir, txn, mounted=False)[1]
    return tree.exists(), pre_database_name(settings.database.dbname, txn) in _databases(settings)


def _park(settings, txn: str) -> None:
    tree = layout(settings.data_base_dir, txn, mounted=False)[1]
    tree.mkdir()
    (tree / "users.json").write_bytes(os.urandom(64))
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{pre_database_name(settings.database.dbname, txn)}"')


def test_default_is_three(env):
    assert Settings.from_env(env).pre_retention_count == 3


def test_only_the_newest_finished_restores_keep_their_copies(settings):
    s = settings.with_overrides(pre_retention_count=2)  # PRE_RETENTION_DAYS stays 7: the age rule removes nothing
    snap = create_snapshot(s)["id"]
    finished = [run_restore_local(s, snap, reason=f"restore {i}")["txn"] for i in range(4)]
    assert all(_copies(s, txn) == (True, True) for txn in finished)
    journal = Journal(s.backup_dir)
    unfinished = "txn-20990101T000000Z-dddddd"  # newer than all, crashed mid-way: not finished
    journal.create(unfinished, snapshot_id=snap, reason="crashed")
    _park(s, unfinished)
    active = begin_restore(s, snap, reason="running now")["txn"]
    _park(s, active)

    report = clean_pre_restore(s)

    old, newest = finished[:2], finished[2:]
    assert report["copies_removed"] == old  # oldest first
    assert report["journals"] == []
    for txn in old:
        assert _copies(s, txn) == (False, False), txn
        doc = journal.load(txn)  # the journal stays until the age rule
        assert doc["pre_copies_removed"]["rule"] == "PRE_RETENTION_COUNT=2"
        assert doc["pre_copies_removed"]["databases"] == [pre_database_name(s.database.dbname, txn)]
        assert any("PRE_RETENTION_COUNT=2" in note for note in doc["notes"])
        assert doc["status"] == "succeeded"  # the outcome of the restore itself is unchanged
    for txn in newest + [unfinished, active]:
        assert _copies(s, txn) == (True, True), txn
    log = s.rollback_log.read_text()
    for txn in old:
        assert f"cleanup txn={txn} rule=PRE_RETENTION_COUNT=2" in log
    assert f"copies_removed={','.join(old)}" in log

    again = clean_pre_restore(s)  # nothing more to do
    assert again["copies_removed"] == [] and again["trees"] == [] and again["databases"] == []
