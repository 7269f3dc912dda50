"""The console's snapshot list and the API show each snapshot's off-site state and BACKUP_DIR's free space."""

from __future__ import annotations

from rollback import remote
from rollback.snapshot import create_snapshot
from tests.web.conftest import API_TOKEN, login
from web import create_app
from web.config import WebConfig


def test_console_and_api_show_the_remote_state(remote_settings):
    uploaded = create_snapshot(remote_settings, notes="uploaded")
    remote.upload_snapshot(remote_settings, uploaded["id"])
    failing = create_snapshot(remote_settings, notes="failing")
    remote.record_failure(remote_settings, failing["id"], "cannot reach the bucket: endpoint unreachable", 2, 120.0)
    app = create_app(remote_settings, WebConfig.from_env({
        "ROLLBACK_ADMIN_USER": "ops", "ROLLBACK_ADMIN_PASSWORD": "correct horse battery staple",
        "SECRET_KEY": "k" * 32, "ROLLBACK_API_TOKEN": API_TOKEN, "ROLLBACK_LOGIN_FAILURE_DELAY_SEC": "0"}))
    client = app.test_client()
    assert login(client, "ops", "correct horse battery staple").status_code == 302
    page = client.get("/admin/rollback/").text
    assert "Off-site copy" in page and 'data-remote="ok"' in page and 'data-remote="failed"' in page
    assert "failed, retrying" in page and "endpoint unreachable" in page
    assert 'id="backup-space"' in page and "the next snapshot needs about" in page
    body = client.get("/admin/rollback/api/snapshots", headers={"Authorization": f"Bearer {API_TOKEN}"}).get_json()
    states = {s["id"]: s["remote"] for s in body["snapshots"]}
    assert states[uploaded["id"]]["state"] == "ok" and states[failing["id"]]["final"] is False
