"""API refusals that never reach the database or the worker: 400, 401, 404 of a txn, 429, API off."""

from __future__ import annotations

import pytest

from tests.web.conftest import API_TOKEN, audit_lines, settings_without_database

API = "/admin/rollback/api"


@pytest.fixture
def settings(tmp_path):
    return settings_without_database(tmp_path)


def test_missing_or_wrong_token_is_401(client, settings):
    for headers in ({}, {"Authorization": "Bearer wrong-token-123456"}, {"Authorization": f"Basic {API_TOKEN}"},
                    {"Authorization": f"Bearer {API_TOKEN}x"}):
        resp = client.get(f"{API}/snapshots", headers=headers)
        assert resp.status_code == 401 and resp.get_json() == {"error": "missing or wrong Bearer token", "status": 401}
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert any("who=api addr=127.0.0.1 action=api outcome=unauthorized" in line for line in audit_lines(settings))


def test_api_is_off_without_a_token(make_app):
    resp = make_app(ROLLBACK_API_TOKEN=None).test_client().get(f"{API}/snapshots")
    assert resp.status_code == 503 and "ROLLBACK_API_TOKEN" in resp.get_json()["error"]


@pytest.mark.parametrize("kwargs", [
    {"data": "not json", "content_type": "application/json"},
    {"data": "{\"snapshot_id\": \"latest\"}", "content_type": "text/plain"},
    {"json": ["latest"]},
    {"json": {"snapshot_id": "../../etc", "reason": "x"}},
    {"json": {"snapshot_id": 7, "reason": "x"}},
    {"json": {"snapshot_id": "latest", "reason": "   "}},
    {"json": {"snapshot_id": "latest", "reason": "x" * 501}},
])
def test_malformed_restore_requests_are_400(client, api_headers, kwargs):
    resp = client.post(f"{API}/restore", headers=api_headers, **kwargs)
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["status"] == 400


def test_malformed_ids_in_urls_are_400_and_unknown_ones_404(client, api_headers):
    assert client.get(f"{API}/restore/not-a-txn", headers=api_headers).status_code == 400
    assert client.get(f"{API}/snapshot/not-a-task", headers=api_headers).status_code == 400
    missing = client.get(f"{API}/restore/txn-20260101T000000Z-abcdef", headers=api_headers)
    assert missing.status_code == 404 and "no restore transaction" in missing.get_json()["error"]
    assert client.get(f"{API}/nothing-here", headers=api_headers).get_json()["status"] == 404


def test_latest_is_404_when_there_is_no_snapshot(client, api_headers):
    resp = client.post(f"{API}/restore", headers=api_headers, json={"snapshot_id": "latest", "reason": "x"})
    assert resp.status_code == 404 and "no snapshot" in resp.get_json()["error"]


def test_too_many_requests_is_429(make_app, api_headers):
    client = make_app(ROLLBACK_API_RATE_LIMIT="3").test_client()
    addr = {"REMOTE_ADDR": "127.0.0.42"}
    codes = [client.get(f"{API}/snapshots", headers=api_headers, environ_base=addr).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    limited = client.get(f"{API}/snapshots", headers=api_headers, environ_base=addr)
    assert limited.get_json()["status"] == 429 and limited.headers["Retry-After"]
    # Wrong tokens count too, so the token cannot be guessed quickly either.
    assert client.get(f"{API}/snapshots", environ_base=addr).status_code == 429
    assert client.get(f"{API}/snapshots", headers=api_headers).status_code == 200  # another address
