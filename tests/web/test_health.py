"""/healthz and the minimal /readyz of the app factory (issue B extends the checks)."""

from __future__ import annotations

from web import create_app
from tests import state


def test_healthz_and_readyz(settings):
    client = create_app(settings).test_client()
    assert client.get("/healthz").get_json() == {"ok": True}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ok"] is True


def test_readyz_is_503_when_the_database_is_behind_the_code(settings):
    state.migrate(settings, "0001_users", command="downgrade")
    resp = create_app(settings).test_client().get("/readyz")
    body = resp.get_json()
    assert resp.status_code == 503 and body["ok"] is False
    assert "0001_users" in body["checks"]["database"]["detail"]


def test_readyz_is_503_when_the_database_is_unreachable(settings):
    down = settings.with_overrides(database=settings.database.__class__(
        host="127.0.0.1", port=1, user="postgres", password=None, dbname="x"))
    resp = create_app(down).test_client().get("/readyz")
    assert resp.status_code == 503 and "unreachable" in resp.get_json()["checks"]["database"]["detail"]
