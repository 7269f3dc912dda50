"""The restore canvas through a real Celery worker (in-process, celery.contrib.pytest) on real Redis."""

from __future__ import annotations

import time

import pytest

from rollback.errors import LockHeld
from rollback.journal import Journal
from rollback.snapshot import create_snapshot
from tasks.restore import enqueue_restore, restore_latest_backup, step_results
from tasks.snapshot import take_snapshot
from tests import state


def _progress_seen(results, timeout=120):
    """Poll task states like the UI does; return the PROGRESS metas observed per step."""
    seen: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    last = results[-1]
    while not last.ready() and time.monotonic() < deadline:
        for r in results:
            # One backend read per task: reading .state then .info races with the step finishing.
            meta = r.backend.get_task_meta(r.id)
            if meta["status"] == "PROGRESS" and isinstance(meta["result"], dict):
                seen.setdefault(meta["result"]["step"], []).append(meta["result"])
        if any(r.failed() for r in results):
            break
        time.sleep(0.02)
    return seen


def test_round_trip_through_the_worker(celery_worker, worker_settings):
    settings = worker_settings
    before = state.capture(settings)
    snap = take_snapshot.delay("via worker").get(timeout=120)
    assert snap["alembic_revision"] == "0002_trips"
    state.bad_deploy(settings, settings.app_repo_dir)

    doc, result = enqueue_restore("latest", reason="worker round trip", requested_by="test")
    results = step_results(result)
    assert [r.id for r in results] == list(Journal(settings.backup_dir).load(doc["txn"])["task_ids"].values())
    seen = _progress_seen(results)
    final = result.get(timeout=120)

    assert final["summary"]["status"] == "succeeded"
    assert [s["step"] for s in final["summary"]["steps"]] == ["preflight", "db", "data", "code", "readyz"]
    assert all(s["duration_sec"] is not None for s in final["summary"]["steps"])
    assert state.capture(settings) == before
    # Progress went through Celery task state with the documented fields.
    assert seen, "no PROGRESS state observed"
    meta = next(iter(seen.values()))[0]
    assert set(meta) == {"txn", "step", "done", "total", "message"} and meta["txn"] == doc["txn"]


def test_restore_latest_backup_enqueues_an_automatic_restore(celery_worker, worker_settings):
    settings = worker_settings
    create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    doc, result = restore_latest_backup(reason="readyz_fail", auto=True)
    assert result.get(timeout=120)["summary"]["status"] == "succeeded"
    journal = Journal(settings.backup_dir).load(doc["txn"])
    assert journal["auto"] is True and journal["reason"] == "readyz_fail"
    assert state.alembic_version(settings) == "0002_trips"


def test_failed_step_stops_the_chain_and_reports(celery_worker, worker_settings):
    settings = worker_settings
    snap = create_snapshot(settings)
    (settings.backup_dir / snap["id"] / snap["artifacts"]["data"]["file"]).write_bytes(b"garbage")
    doc, result = enqueue_restore(snap["id"], reason="corrupt")
    preflight_result = step_results(result)[0]
    with pytest.raises(Exception) as info:
        preflight_result.get(timeout=60)
    assert "preflight" in str(info.value)
    journal = Journal(settings.backup_dir).load(doc["txn"])
    assert journal["status"] == "failed" and journal["steps"]["db"]["status"] == "pending"


def test_second_restore_is_refused_while_one_is_admitted(worker_settings):
    settings = worker_settings
    create_snapshot(settings)
    from rollback.restore import begin_restore

    first = begin_restore(settings, "latest", reason="first")
    with pytest.raises(LockHeld, match=f"restore {first['txn']} in progress"):
        begin_restore(settings, "latest", reason="second")
    with pytest.raises(LockHeld):
        create_snapshot(settings)
    assert f"status=refused" in settings.rollback_log.read_text()
