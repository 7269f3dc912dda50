"""The plan and the discarded-writes report on the web: the API (Bearer token) and the console's
confirmation, history and report pages; bad input answers 400/404 in one line."""

from __future__ import annotations

from rollback.discarded import build_report
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from tests import state
from tests.discarded.writes import GroundTruth, keep_writing

API = "/admin/rollback/api"


def test_plan_and_report_on_the_web(settings, client, console, api_headers):
    snap = create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    truth = GroundTruth.of_bad_deploy()
    keep_writing(settings, truth)

    resp = client.get(f"{API}/plan?snapshot_id=latest", headers=api_headers)
    assert resp.status_code == 200, resp.text
    plan = resp.get_json()
    assert {"code", "alembic", "tables", "data", "path", "estimate_sec", "space"} <= set(plan)
    assert plan["snapshot_id"] == snap["id"] and plan["data"]["added"] == len(truth.files_added)
    assert client.get(f"{API}/plan", headers=api_headers).status_code == 400
    assert client.get(f"{API}/plan?snapshot_id=../x", headers=api_headers).status_code == 400
    assert client.get(f"{API}/plan?snapshot_id=latest").status_code == 401

    page = console.get(f"/admin/rollback/confirm/{snap['id']}")
    assert page.status_code == 200 and 'id="restore-plan"' in page.text
    assert "0003_bad_deploy" in page.text and "public.users" in page.text and "uploads/notes-new.txt" in page.text

    doc = run_restore_local(settings, snap["id"], reason="bad deploy")
    assert client.get(f"{API}/discarded/{doc['txn']}", headers=api_headers).status_code == 404  # not made yet
    build_report(settings, doc["txn"])
    resp = client.get(f"{API}/discarded/{doc['txn']}", headers=api_headers)
    assert resp.status_code == 200
    users = next(t for t in resp.get_json()["tables"] if t["table"] == "public.users")
    assert users["insert"] == len(truth.inserted["users"]) and users["delete"] == 1
    assert client.get(f"{API}/discarded/txn-20260101T000000Z-abcdef", headers=api_headers).status_code == 404
    assert client.get(f"{API}/discarded/nope", headers=api_headers).status_code == 400

    history = console.get("/admin/rollback/history/")
    assert history.status_code == 200 and f"/admin/rollback/history/discarded/{doc['txn']}" in history.text
    assert f"{users['insert'] + 1 + 1} inserted" in history.text  # users + the trip + the audit_events row
    report = console.get(f"/admin/rollback/history/discarded/{doc['txn']}")
    assert report.status_code == 200 and 'data-table="public.users"' in report.text and "nickname" in report.text
