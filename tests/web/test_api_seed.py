"""The runbook's API call, exactly as written:

curl -X POST https://<host>/admin/rollback/api/restore -H 'Authorization: Bearer <token>' \
     -H 'Content-Type: application/json' -d '{"snapshot_id": "<ID>"}'
"""

from __future__ import annotations

import json

from rollback.journal import Journal
from tests import state
from tests.web.conftest import API_TOKEN, audit_lines, wait_for_status

API = "/admin/rollback/api"
CALLER = "127.0.0.7"  # an allowed address other than the test client's default, to see it carried through


def test_restore_with_only_a_snapshot_id(client, celery_worker, worker_settings, snapshot):
    settings = worker_settings
    before = state.capture(settings)
    state.bad_deploy(settings, settings.app_repo_dir)

    resp = client.post(f"{API}/restore", data=json.dumps({"snapshot_id": snapshot["id"]}),
                       headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
                       environ_base={"REMOTE_ADDR": CALLER})
    assert resp.status_code == 202, resp.get_json()
    txn = resp.get_json()["txn"]
    final = wait_for_status(client, resp.get_json()["status_url"], {"Authorization": f"Bearer {API_TOKEN}"})
    assert final["status"] == "succeeded", final
    assert state.capture(settings) == before

    doc = Journal(settings.backup_dir).load(txn)
    assert doc["reason"] == "api" and doc["requested_by"] == f"api@{CALLER}" and doc["auto"] is False
    log = settings.rollback_log.read_text()
    assert f"ROLLBACK id={txn} step=restore status=queued snapshot={snapshot['id']} reason=api auto=false " \
           f"by=api@{CALLER}" in log
    assert any(f"who=api addr={CALLER} action=restore outcome=queued txn={txn}" in line and "reason=api" in line
               for line in audit_lines(settings))


def test_a_reason_that_is_sent_must_say_something(client, api_headers, snapshot, settings):
    resp = client.post(f"{API}/restore", headers=api_headers, json={"snapshot_id": snapshot["id"], "reason": "  "})
    assert resp.status_code == 400 and resp.get_json()["error"] == "reason is required"
    assert Journal(settings.backup_dir).all() == []
