"""Remote retention (BACKUP_REMOTE_RETENTION) keeps the newest, the newest ready snapshot and the one a
restore uses; the BACKUP_DIR free-space alert fires when the next snapshot would not fit."""

from __future__ import annotations

import copy

from rollback import remote
from rollback.ids import new_txn_id
from rollback.lock import ServiceLock
from rollback.manifest import Manifest
from rollback.snapshot import create_snapshot
from rollback.space import alert_if_low, backup_space
from tests.remote.conftest import keys


def test_remote_retention_keeps_newest_ready_and_in_use(remote_settings, s3, bucket):
    settings = remote_settings.with_overrides(remote_retention=1)
    ids = []
    for n in range(4):
        entry = create_snapshot(settings, notes=f"s{n}")
        remote.upload_snapshot(settings, entry["id"])
        ids.append(entry["id"])
    Manifest.for_settings(settings).update(ids[0], ready_check={"status": "ok", "at": "2026-01-01T00:00:00Z"})
    lock, txn = ServiceLock(settings.backup_dir), new_txn_id()
    with lock.held({"kind": "restore", "txn": txn}):  # a restore of ids[1] owns the service
        lock.claim({"kind": "restore", "txn": txn, "snapshot_id": ids[1]})
    try:
        report = remote.prune_remote(settings)
    finally:
        with lock.held({"kind": "restore", "txn": txn}):
            lock.release(txn)
    assert report["removed"] == [ids[2]]
    assert [r["id"] for r in remote.remote_snapshots(settings)] == [ids[0], ids[1], ids[3]]
    assert not [k for k in keys(s3, bucket) if ids[2] in k]


def test_space_alert_when_the_next_snapshot_would_not_fit(remote_settings, webhook):
    settings = remote_settings.with_overrides(notify_webhook_url=webhook.url)
    entry = create_snapshot(settings)
    assert backup_space(settings)["low"] is False and alert_if_low(settings)["alerted"] is False
    huge = copy.deepcopy(entry)
    huge["id"] = entry["id"][:-1] + ("0" if entry["id"][-1] != "0" else "1")
    huge["artifacts"]["db"]["size"] = 1 << 52  # a snapshot far larger than any test disk
    Manifest.for_settings(settings).add(huge)
    first = alert_if_low(settings)
    assert first["low"] and first["alerted"] and "BACKUP_DIR" in webhook.texts()[0]
    assert alert_if_low(settings)["alerted"] is False  # once a day, not every beat tick
    assert len(webhook.texts()) == 1


def test_beat_sync_sends_what_no_upload_is_running_for(remote_settings, remote_env, celery_app, monkeypatch):
    from tasks.base import use_settings
    from tasks.remote import sync_remote

    old = create_snapshot(remote_settings, notes="taken before BACKUP_REMOTE_URL was set")  # no state file
    fresh = create_snapshot(remote_settings)
    remote.write_state(remote_settings, fresh["id"], "pending")  # its upload was just sent
    gave_up = create_snapshot(remote_settings)
    remote.record_failure(remote_settings, gave_up["id"], "endpoint unreachable", 6, None)
    retrying = create_snapshot(remote_settings)
    remote.record_failure(remote_settings, retrying["id"], "endpoint unreachable", 1, 60.0)
    assert remote.needing_upload(remote_settings) == [old["id"], gave_up["id"]]
    use_settings(remote_settings)
    try:
        report = sync_remote.run()  # the beat task's body, here; its uploads go to the tests' broker
    finally:
        use_settings(None)
    assert report["queued"] == [old["id"], gave_up["id"]] and report["prune"]["removed"] == []
    assert remote.read_state(remote_settings, gave_up["id"])["state"] == "pending"
