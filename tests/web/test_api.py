"""The Bearer-token API against real snapshots: 404, 409, the list, and restore/snapshot through a real
Celery worker (the refusals that need no database are in test_api_errors.py)."""

from __future__ import annotations

import time

from rollback.restore import abandon, begin_restore
from tests import state
from tests.web.conftest import audit_lines, wait_for_status

API = "/admin/rollback/api"


def test_unknown_snapshot_is_404(client, api_headers, snapshot):
    ref = "20200101T000000Z-abcdef"
    resp = client.post(f"{API}/restore", headers=api_headers, json={"snapshot_id": ref, "reason": "x"})
    assert resp.status_code == 404 and ref in resp.get_json()["error"]


def test_restore_and_snapshot_are_409_while_a_restore_is_in_progress(client, api_headers, settings, snapshot):
    doc = begin_restore(settings, "latest", "already running", requested_by="test")
    try:
        second = client.post(f"{API}/restore", headers=api_headers, json={"snapshot_id": "latest", "reason": "x"})
        assert second.status_code == 409 and doc["txn"] in second.get_json()["error"]
        snap = client.post(f"{API}/snapshot", headers=api_headers)
        assert snap.status_code == 409 and doc["txn"] in snap.get_json()["error"]
    finally:
        abandon(settings, doc["txn"], "test over")
    assert any("action=restore outcome=refused" in line for line in audit_lines(settings))


def test_snapshots_lists_the_manifest_newest_first(client, api_headers, settings, snapshot):
    from rollback.snapshot import create_snapshot

    newer = create_snapshot(settings, notes="second")
    body = client.get(f"{API}/snapshots", headers=api_headers).get_json()
    assert [e["id"] for e in body["snapshots"]] == [newer["id"], snapshot["id"]]
    assert body["snapshots"][1]["artifacts"]["db"]["sha256"] == snapshot["artifacts"]["db"]["sha256"]


def test_restore_through_the_api_and_a_real_worker(client, api_headers, celery_worker, worker_settings, snapshot):
    settings = worker_settings
    before = state.capture(settings)
    state.bad_deploy(settings, settings.app_repo_dir)

    resp = client.post(f"{API}/restore", headers=api_headers, json={"snapshot_id": "latest", "reason": "bad deploy"})
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"txn", "task_id", "status_url"} and body["status_url"] == f"{API}/restore/{body['txn']}"
    final = wait_for_status(client, body["status_url"], api_headers)

    assert final["status"] == "succeeded", final
    assert [s["step"] for s in final["steps"]] == ["preflight", "db", "data", "code", "readyz"]
    assert all(s["status"] == "ok" and s["duration_sec"] is not None for s in final["steps"])
    assert final["percent"] == 100 and final["requested_by"] == "api@127.0.0.1" and final["auto"] is False
    assert state.capture(settings) == before
    assert any(f"action=restore outcome=queued txn={body['txn']}" in line for line in audit_lines(settings))


def test_snapshot_through_the_api_and_a_real_worker(client, api_headers, celery_worker, worker_settings):
    resp = client.post(f"{API}/snapshot", headers=api_headers, json={"notes": "pipeline 1.4.2"})
    assert resp.status_code == 202
    status_url = resp.get_json()["status_url"]
    # While the task is queued or running, a second request is refused.
    second = client.post(f"{API}/snapshot", headers=api_headers)
    assert second.status_code == 409 and "snapshot" in second.get_json()["error"]
    deadline = time.monotonic() + 120
    while (task := client.get(status_url, headers=api_headers).get_json())["state"] != "SUCCESS":
        assert task["state"] != "FAILURE" and time.monotonic() < deadline, task
        time.sleep(0.2)
    listed = client.get(f"{API}/snapshots", headers=api_headers).get_json()["snapshots"]
    assert task["result"]["id"] in [e["id"] for e in listed] and listed[0]["notes"] == "pipeline 1.4.2"
