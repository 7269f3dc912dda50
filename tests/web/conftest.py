"""Fixtures for the web adapter: an app with console login and API token, logged-in clients,
snapshots taken with the core, and helpers to read CSRF tokens and audit lines."""

from __future__ import annotations

import re
import secrets
import time

import pytest

from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from tests.conftest import REDIS_URL
from web import create_app
from web.config import WebConfig

ADMIN_USER = "ops"
ADMIN_PASSWORD = "correct horse battery staple"
API_TOKEN = "test-api-token-" + secrets.token_hex(8)
_CSRF_RE = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


@pytest.fixture
def web_env() -> dict:
    """The web part of a deployment's environment (the core part comes from `settings`)."""
    return {
        "ROLLBACK_ADMIN_USER": ADMIN_USER,
        "ROLLBACK_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SECRET_KEY": secrets.token_hex(32),
        "ROLLBACK_API_TOKEN": API_TOKEN,
        "ROLLBACK_LOGIN_FAILURE_DELAY_SEC": "0",
    }


def settings_without_database(tmp_path) -> Settings:
    """Settings for tests that never reach the database, the data dir or the worker (access rules,
    request validation): no database to create and migrate, so they stay fast. A test module
    opts in by overriding the `settings` fixture with this."""
    return Settings.from_env({
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/rbtest_never_created",
        "DATA_BASE_DIR": str(tmp_path / "var-data"), "BACKUP_DIR": str(tmp_path / "backup"),
        "LOG_DIR": str(tmp_path / "logs"), "APP_REPO_DIR": str(tmp_path),
        "CELERY_BROKER_URL": REDIS_URL, "CELERY_RESULT_BACKEND": REDIS_URL,
    })


@pytest.fixture
def make_app(settings, web_env):
    """create_app(settings, config) with the web env plus overrides (a value of None removes a key)."""

    def make(settings_=None, **overrides):
        env = {k: v for k, v in {**web_env, **overrides}.items() if v is not None}
        return create_app(settings_ or settings, WebConfig.from_env(env))

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def console(client):
    """A test client logged in to the console."""
    resp = login(client)
    assert resp.status_code == 302, resp.text
    return client


@pytest.fixture
def api_headers() -> dict:
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def snapshot(settings) -> dict:
    """A snapshot of the app's good state, taken with the core in this process."""
    return create_snapshot(settings, notes="before deploy")


def csrf_token(client, path: str = "/admin/rollback/login") -> str:
    match = _CSRF_RE.search(client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD, **environ):
    token = csrf_token(client)
    return client.post("/admin/rollback/login", data={"csrf_token": token, "username": user, "password": password},
                       environ_base=environ)


def audit_lines(settings) -> list[str]:
    log = settings.rollback_log
    return [line for line in log.read_text().splitlines() if " AUDIT " in line] if log.exists() else []


def wait_for_status(client, url: str, headers: dict | None = None, timeout: float = 120) -> dict:
    """Poll a restore status URL like the progress page does, until the txn is final."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url, headers=headers).get_json()
        if body["final"] or time.monotonic() > deadline:
            return body
        time.sleep(0.2)
