"""The console pages with the Flask test client: list, confirmation, progress, history, verify."""

from __future__ import annotations

import re
import time

from rollback.manifest import Manifest
from rollback.restore import abandon, begin_restore
from rollback.snapshot import create_snapshot
from tests import state
from tests.web.conftest import audit_lines, csrf_token, login, wait_for_status


def _row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-snapshot="([^"]+)"', html)


def test_list_shows_snapshots_newest_first_and_sorts(console, settings, snapshot):
    newer = create_snapshot(settings, notes="another")
    Manifest(settings.backup_dir).update(snapshot["id"], ready_check={"status": "ok", "at": "2026-01-01T00:00:00Z",
                                                                      "deploy_id": "deploy-7"})
    page = console.get("/admin/rollback/")
    assert page.status_code == 200
    assert _row_ids(page.text) == [newer["id"], snapshot["id"]]
    for shown in (snapshot["app_revision"][:12], "0002_trips", "before deploy", "Verify",
                  "Restore to the previous snapshot", 'title="deploy deploy-7">ready<'):
        assert shown in page.text
    assert _row_ids(console.get("/admin/rollback/?sort=notes&dir=desc").text) == [snapshot["id"], newer["id"]]
    assert _row_ids(console.get("/admin/rollback/?sort=created&dir=asc").text) == [snapshot["id"], newer["id"]]


def test_automatic_rollback_state_is_shown(make_app, settings):
    for enabled, badge in ((True, ">on<"), (False, ">off<")):
        client = make_app(settings.with_overrides(canary_enabled=enabled)).test_client()
        login(client)
        page = client.get("/admin/rollback/").text
        assert "Automatic rollback" in page and re.search(r'id="canary-state">' + badge[1:], page)


def test_confirmation_shows_current_and_target_and_needs_explicit_consent(console, settings, snapshot):
    state.bad_deploy(settings, settings.app_repo_dir)
    page = console.get("/admin/rollback/confirm/latest")
    assert page.status_code == 200
    plan = page.text
    assert state.git_head(settings.app_repo_dir) in plan and snapshot["app_revision"] in plan
    assert "0003_bad_deploy" in plan and "0002_trips" in plan
    assert "Execute restore" in plan and 'name="reason"' in plan
    token = csrf_token(console, "/admin/rollback/confirm/latest")
    no_consent = console.post("/admin/rollback/restore",
                              data={"csrf_token": token, "snapshot_id": snapshot["id"], "reason": "bad deploy"})
    assert no_consent.status_code == 400 and "Tick this to confirm" in no_consent.text
    no_reason = console.post("/admin/rollback/restore",
                             data={"csrf_token": token, "snapshot_id": snapshot["id"], "confirm": "y"})
    assert no_reason.status_code == 400
    assert not (settings.backup_dir / "journal").exists() or not list((settings.backup_dir / "journal").iterdir())


def test_unknown_or_malformed_snapshot_on_the_confirmation_page(console, snapshot):
    assert console.get("/admin/rollback/confirm/20200101T000000Z-abcdef").status_code == 404
    assert console.get("/admin/rollback/confirm/not-an-id").status_code == 400


def test_restore_from_the_console_with_a_real_worker(console, celery_worker, worker_settings, snapshot):
    settings = worker_settings
    before = state.capture(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    token = csrf_token(console, "/admin/rollback/confirm/latest")
    resp = console.post("/admin/rollback/restore", data={"csrf_token": token, "snapshot_id": snapshot["id"],
                                                         "reason": "bad deploy", "confirm": "y"})
    assert resp.status_code == 302
    txn = resp.headers["Location"].rsplit("/", 1)[1]
    assert console.get(resp.headers["Location"]).status_code == 200

    final = wait_for_status(console, f"/admin/rollback/status/{txn}")
    assert final["status"] == "succeeded", final
    assert state.capture(settings) == before

    page = console.get(f"/admin/rollback/restore/{txn}").text
    assert "Restore succeeded" in page and all(f'data-step="{s}"' in page for s in ("preflight", "db", "readyz"))
    history = console.get("/admin/rollback/history/").text
    assert txn in history and "console:ops" in history and "manual" in history and "succeeded" in history
    assert any(f"who=ops addr=127.0.0.1 action=restore outcome=queued txn={txn}" in line
               for line in audit_lines(settings))


def test_a_running_restore_is_shown_instead_of_starting_another(console, settings, snapshot):
    running = begin_restore(settings, "latest", "canary: readyz failing", auto=True, requested_by="canary")
    try:
        banner = console.get("/admin/rollback/").text
        assert "A restore is running" in banner and running["txn"] in banner
        confirm = console.get("/admin/rollback/confirm/latest")
        assert confirm.status_code == 302 and confirm.headers["Location"] == f"/admin/rollback/restore/{running['txn']}"
        token = csrf_token(console, "/admin/rollback/")  # a confirmation page opened before the restore began
        resp = console.post("/admin/rollback/restore", data={"csrf_token": token, "snapshot_id": snapshot["id"],
                                                             "reason": "me too", "confirm": "y"})
        assert resp.status_code == 302 and resp.headers["Location"] == f"/admin/rollback/restore/{running['txn']}"
        page = console.get(resp.headers["Location"]).text
        assert "The running restore is shown instead" in page
        history = console.get("/admin/rollback/history/").text
        assert "automatic" in history and "canary" in history
    finally:
        abandon(settings, running["txn"], "test over")


def test_verify_action_records_the_outcome(console, celery_worker, worker_settings, snapshot):
    settings = worker_settings
    (settings.backup_dir / snapshot["id"] / snapshot["artifacts"]["data"]["file"]).write_bytes(b"tampered")
    token = csrf_token(console, "/admin/rollback/")
    resp = console.post(f"/admin/rollback/verify/{snapshot['id']}", data={"csrf_token": token})
    assert resp.status_code == 302
    deadline = time.monotonic() + 60
    while Manifest(settings.backup_dir).get(snapshot["id"])["verified"]["ok"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Manifest(settings.backup_dir).get(snapshot["id"])["verified"]["ok"] is False
    assert ">failed<" in console.get("/admin/rollback/").text
    assert console.post("/admin/rollback/verify/20200101T000000Z-abcdef", data={"csrf_token": token}).status_code == 404


def test_take_snapshot_from_the_console_with_a_real_worker(console, celery_worker, worker_settings):
    settings = worker_settings
    assert console.get("/admin/").headers["Location"] == "/admin/rollback/"
    token = csrf_token(console, "/admin/rollback/")
    resp = console.post("/admin/rollback/snapshot", data={"csrf_token": token, "notes": "from the console"})
    assert resp.status_code == 302 and "Snapshot sent to the worker" in console.get("/admin/rollback/").text
    deadline = time.monotonic() + 60
    while not Manifest(settings.backup_dir).entries() and time.monotonic() < deadline:
        time.sleep(0.1)
    entries = Manifest(settings.backup_dir).entries()
    assert [e["notes"] for e in entries] == ["from the console"]
    assert any("who=ops addr=127.0.0.1 action=snapshot outcome=queued" in line for line in audit_lines(settings))
