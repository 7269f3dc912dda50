"""Hardening found by the kill-point sweep (item 1): an owner record left by a process that died after
its transaction ended does not block the service."""

from __future__ import annotations

import json

from rollback import restore as core
from rollback.journal import Journal
from rollback.lock import ServiceLock
from rollback.snapshot import create_snapshot


def test_an_owner_whose_txn_ended_does_not_hold_the_service(settings):
    snap = create_snapshot(settings)
    doc = core.run_restore_local(settings, snap["id"], reason="first")
    # What a kill between `journal: succeeded` and the removal of active.json leaves behind:
    (settings.backup_dir / "active.json").write_text(json.dumps({"kind": "restore", "txn": doc["txn"],
                                                                 "snapshot_id": snap["id"]}))
    lock = ServiceLock(settings.backup_dir)
    assert lock.active() is None
    create_snapshot(settings)  # not refused
    second = core.run_restore_local(settings, snap["id"], reason="second")
    assert second["status"] == "succeeded" and lock.active() is None
    assert Journal(settings.backup_dir).load(doc["txn"])["status"] == "succeeded"


def test_an_owner_whose_txn_is_unfinished_still_holds_it(settings):
    snap = create_snapshot(settings)
    doc = core.begin_restore(settings, snap["id"], reason="admitted, not run")
    lock = ServiceLock(settings.backup_dir)
    assert lock.active()["txn"] == doc["txn"]
    lock_path = settings.backup_dir / "active.json"
    lock_path.write_text("{not json")
    assert lock.active()["txn"].startswith("unknown")  # unreadable: held, never ignored
    lock_path.write_text(json.dumps({"kind": "restore", "txn": doc["txn"]}))
    core.abandon(settings, doc["txn"], "test over")
    assert lock.active() is None and not lock_path.exists()
