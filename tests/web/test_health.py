"""/healthz and /readyz: every check passing, each check failing in turn, bounded time, masked secrets."""

from __future__ import annotations

import logging
import socket
import time

import psycopg
import pytest

from tests import state


def _readyz(make_app, settings_=None, **env):
    started = time.monotonic()
    resp = make_app(settings_, **env).test_client().get("/readyz")
    return resp, time.monotonic() - started


def test_healthz_and_readyz_pass(make_app):
    client = make_app(READYZ_TABLES="users:50,trips", READYZ_REQUIRED_ENV="SECRET_KEY").test_client()
    assert client.get("/healthz").get_json() == {"ok": True}
    resp = client.get("/readyz")
    body = resp.get_json()
    assert resp.status_code == 200 and body["ok"] is True, body
    assert set(body["checks"]) == {"env", "users_file", "database", "alembic"}
    assert all(c["ok"] and isinstance(c["ms"], float) and c["detail"] for c in body["checks"].values())


def _failed(resp) -> dict:
    body = resp.get_json()
    assert resp.status_code == 503 and body["ok"] is False
    return {name: c["detail"] for name, c in body["checks"].items() if not c["ok"]}


def test_readyz_fails_when_a_required_variable_is_missing(make_app):
    resp, _ = _readyz(make_app, READYZ_REQUIRED_ENV="SECRET_KEY,PAYMENT_API_KEY")
    assert _failed(resp) == {"env": "missing: PAYMENT_API_KEY; present: SECRET_KEY=***"}


@pytest.mark.parametrize("content", [None, "corrupted by the deploy"])
def test_readyz_fails_when_the_users_file_is_missing_or_not_json(make_app, settings, content):
    users = settings.data_base_dir / "users.json"
    users.unlink()
    if content is not None:
        users.write_text(content)
    failed = _failed(_readyz(make_app)[0])
    assert list(failed) == ["users_file"]
    assert ("not valid JSON" if content else "No such file") in failed["users_file"]


def test_readyz_users_file_is_configurable(make_app, settings):
    (settings.data_base_dir / "uploads" / "people.json").write_text("[]")
    assert _readyz(make_app, READYZ_USERS_FILE="uploads/people.json")[0].status_code == 200
    assert list(_failed(_readyz(make_app, READYZ_USERS_FILE="uploads/nobody.json")[0])) == ["users_file"]


def test_readyz_fails_when_a_table_is_missing_or_too_small(make_app):
    failed = _failed(_readyz(make_app, READYZ_TABLES="users,audit_events")[0])
    assert failed == {"database": "table audit_events does not exist"}
    failed = _failed(_readyz(make_app, READYZ_TABLES="users:51")[0])
    assert failed == {"database": "table users has 50 rows, at least 51 required"}


def test_readyz_fails_when_the_database_is_behind_the_code(make_app, settings):
    state.migrate(settings, "0001_users", command="downgrade")
    failed = _failed(_readyz(make_app)[0])
    assert failed == {"alembic": "database at 0001_users, code head 0002_trips"}


def test_readyz_fails_when_the_database_is_unreachable(make_app, settings):
    down = settings.with_overrides(database=settings.database.__class__(
        host="127.0.0.1", port=1, user="postgres", password=None, dbname="x"))
    failed = _failed(_readyz(make_app, down)[0])
    assert set(failed) == {"database", "alembic"} and "unreachable" in failed["database"]


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers: a hung database."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_readyz_answers_within_2s_when_the_database_hangs(make_app, settings, silent_server):
    hung = settings.with_overrides(database=settings.database.__class__(
        host="127.0.0.1", port=silent_server, user="postgres", password=None, dbname="x"))
    resp, elapsed = _readyz(make_app, hung)
    failed = _failed(resp)
    assert elapsed < 2.0, elapsed
    assert set(failed) == {"database", "alembic"} and "timed out" in failed["database"]


def test_readyz_answers_within_2s_when_a_table_is_locked(make_app, settings):
    with psycopg.connect(settings.database.conninfo()) as locker:
        locker.execute("lock table users in access exclusive mode")
        resp, elapsed = _readyz(make_app, READYZ_TABLES="users:1")
        locker.rollback()
    assert elapsed < 2.0, elapsed
    failed = _failed(resp)
    assert list(failed) == ["database"] and "users" in failed["database"]


def test_readyz_never_shows_required_values(make_app, settings, caplog):
    secret = settings.database.dbname  # a value that also appears in the database check's detail
    caplog.set_level(logging.WARNING, logger="web.readyz")
    resp, _ = _readyz(make_app, READYZ_REQUIRED_ENV="APP_DB_NAME,MISSING_ONE", APP_DB_NAME=secret)
    assert resp.status_code == 503
    text = resp.get_data(as_text=True)
    assert secret not in text and "APP_DB_NAME=***" in text and "database *** reachable" in text
    assert "MISSING_ONE" in caplog.text and secret not in caplog.text
