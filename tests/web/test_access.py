"""Who gets in: the address allowlist (and X-Forwarded-For spoofing), the login, the session cookie,
CSRF on every form, the login throttle, and the web settings' validation."""

from __future__ import annotations

import re

import pytest
from werkzeug.security import generate_password_hash

from rollback.errors import ConfigError
from web.config import WebConfig
from tests.web.conftest import ADMIN_PASSWORD, API_TOKEN, audit_lines, csrf_token, login, settings_without_database

OUTSIDE = {"REMOTE_ADDR": "203.0.113.9"}


@pytest.fixture
def settings(tmp_path):
    return settings_without_database(tmp_path)


def test_console_and_api_refuse_addresses_outside_the_allowlist(client, api_headers, settings):
    page = client.get("/admin/rollback/login", environ_base=OUTSIDE)
    assert page.status_code == 403 and "203.0.113.9" in page.text
    api = client.get("/admin/rollback/api/snapshots", headers=api_headers, environ_base=OUTSIDE)
    assert api.status_code == 403 and api.get_json()["status"] == 403
    assert client.get("/admin/", environ_base=OUTSIDE).status_code == 403
    assert any("action=access outcome=denied" in line and "addr=203.0.113.9" in line for line in audit_lines(settings))
    # /healthz and /readyz stay open to the load balancer.
    assert client.get("/healthz", environ_base=OUTSIDE).status_code == 200


def test_loopback_is_the_default_and_cidrs_are_honoured(make_app):
    default = make_app().test_client()
    assert default.get("/admin/rollback/login", environ_base={"REMOTE_ADDR": "127.0.0.5"}).status_code == 200
    assert default.get("/admin/rollback/login", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    office = make_app(ALLOW_ADMIN_ROLLBACK_IPS="10.1.0.0/16, 2001:db8::/32").test_client()
    assert office.get("/admin/rollback/login", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert office.get("/admin/rollback/login", environ_base={"REMOTE_ADDR": "2001:db8::7"}).status_code == 200
    assert office.get("/admin/rollback/login", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403


def test_x_forwarded_for_is_ignored_without_trusted_proxies(client, api_headers):
    spoofed = {"X-Forwarded-For": "127.0.0.1", **api_headers}
    assert client.get("/admin/rollback/api/snapshots", headers=spoofed, environ_base=OUTSIDE).status_code == 403


def test_only_the_trusted_hop_of_x_forwarded_for_counts(make_app, api_headers):
    client = make_app(TRUSTED_PROXY_HOPS="1").test_client()
    proxy = {"REMOTE_ADDR": "127.0.0.1"}
    # The proxy appends the real client; what the client itself wrote further left is not trusted.
    spoofed = {"X-Forwarded-For": "127.0.0.1, 203.0.113.9", **api_headers}
    assert client.get("/admin/rollback/api/snapshots", headers=spoofed, environ_base=proxy).status_code == 403
    honest = {"X-Forwarded-For": "127.0.0.1", **api_headers}
    assert client.get("/admin/rollback/api/snapshots", headers=honest, environ_base=proxy).status_code == 200


def test_console_needs_a_login(client, settings):
    resp = client.get("/admin/rollback/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/admin/rollback/login?next=")
    assert client.get("/admin/rollback/history/").status_code == 302
    assert client.get("/admin/rollback/status/txn-20260101T000000Z-abcdef").status_code == 401

    wrong = login(client, password="wrong")
    assert wrong.status_code == 200 and "Wrong user or password" in wrong.text
    assert login(client, user="root", password=ADMIN_PASSWORD).status_code == 200
    ok = login(client)
    assert ok.status_code == 302 and ok.headers["Location"] == "/admin/rollback/"
    assert client.get("/admin/rollback/").status_code == 200
    lines = audit_lines(settings)
    assert sum("action=login outcome=failed" in line for line in lines) == 2
    assert any("who=ops addr=127.0.0.1 action=login outcome=ok" in line for line in lines)


def test_session_cookie_is_secure_httponly_samesite(client):
    cookie = login(client).headers["Set-Cookie"]
    assert "rollback_session=" in cookie
    assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax"))
    page = client.get("/admin/rollback/")
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"


def test_login_with_a_password_hash(make_app):
    client = make_app(ROLLBACK_ADMIN_PASSWORD=None,
                      ROLLBACK_ADMIN_PASSWORD_HASH=generate_password_hash("from a vault")).test_client()
    assert login(client, password=ADMIN_PASSWORD).status_code == 200
    assert login(client, password="from a vault").status_code == 302


def test_login_redirects_only_inside_the_console(client):
    token = csrf_token(client)
    data = {"csrf_token": token, "username": "ops", "password": ADMIN_PASSWORD}
    resp = client.post("/admin/rollback/login?next=//evil.example/x", data=data)
    assert resp.headers["Location"] == "/admin/rollback/"
    client.post("/admin/rollback/logout", data={"csrf_token": csrf_token(client, "/admin/rollback/")})
    resp = client.post("/admin/rollback/login?next=/admin/rollback/history/",
                       data=dict(data, csrf_token=csrf_token(client)))
    assert resp.headers["Location"] == "/admin/rollback/history/"


def test_repeated_failed_logins_are_throttled(make_app, settings):
    client = make_app(ROLLBACK_LOGIN_MAX_FAILURES="3").test_client()
    attacker = {"REMOTE_ADDR": "127.0.0.77"}
    for _ in range(3):
        assert login(client, password="guess", **attacker).status_code == 200
    # Even the right password is refused until the window passes: the guesser cannot tell.
    assert login(client, **attacker).status_code == 429
    assert login(client).status_code == 302  # another address is not affected
    assert any("action=login outcome=throttled" in line for line in audit_lines(settings))


@pytest.mark.parametrize("path", ["/admin/rollback/login", "/admin/rollback/restore", "/admin/rollback/snapshot",
                                  "/admin/rollback/verify/20260101T000000Z-abcdef", "/admin/rollback/logout"])
def test_every_form_is_refused_without_a_csrf_token(console, path, settings):
    resp = console.post(path, data={"username": "ops", "password": ADMIN_PASSWORD, "reason": "x", "confirm": "y",
                                    "snapshot_id": "latest"})
    assert resp.status_code == 400 and "CSRF" in resp.text
    wrong = console.post(path, data={"csrf_token": "forged"})
    assert wrong.status_code == 400
    assert any("action=form outcome=refused" in line for line in audit_lines(settings))


def test_logout_ends_the_session(console):
    token = csrf_token(console, "/admin/rollback/")
    assert console.post("/admin/rollback/logout", data={"csrf_token": token}).status_code == 302
    assert console.get("/admin/rollback/").status_code == 302


def test_console_is_disabled_without_credentials(make_app):
    client = make_app(ROLLBACK_ADMIN_USER=None, ROLLBACK_ADMIN_PASSWORD=None, SECRET_KEY=None).test_client()
    page = client.get("/admin/rollback/login")
    assert page.status_code == 200 and "console is disabled" in page.text
    assert client.get("/admin/rollback/").status_code == 302


# -- settings --------------------------------------------------------------------------------------
BASE = {"ROLLBACK_ADMIN_USER": "ops", "ROLLBACK_ADMIN_PASSWORD": "pw", "SECRET_KEY": "k" * 32}


@pytest.mark.parametrize("change, variable", [
    ({"SECRET_KEY": None}, "SECRET_KEY"),
    ({"SECRET_KEY": "short"}, "SECRET_KEY"),
    ({"ROLLBACK_ADMIN_PASSWORD": None}, "ROLLBACK_ADMIN_PASSWORD"),
    ({"ROLLBACK_ADMIN_PASSWORD_HASH": "plain-text"}, "ROLLBACK_ADMIN_PASSWORD_HASH"),
    ({"ROLLBACK_ADMIN_USER": None}, "ROLLBACK_ADMIN_USER"),
    ({"ALLOW_ADMIN_ROLLBACK_IPS": "10.0.0.0/33"}, "ALLOW_ADMIN_ROLLBACK_IPS"),
    ({"TRUSTED_PROXY_HOPS": "-1"}, "TRUSTED_PROXY_HOPS"),
    ({"ROLLBACK_API_TOKEN": "short"}, "ROLLBACK_API_TOKEN"),
    ({"READYZ_TABLES": "users;drop"}, "READYZ_TABLES"),
    ({"READYZ_TABLES": "users:many"}, "READYZ_TABLES"),
    ({"READYZ_USERS_FILE": "../etc/passwd"}, "READYZ_USERS_FILE"),
    ({"READYZ_REQUIRED_ENV": "A,not a name"}, "READYZ_REQUIRED_ENV"),
    ({"READYZ_CHECK_TIMEOUT_SEC": "5"}, "READYZ_CHECK_TIMEOUT_SEC"),
    ({"ROLLBACK_COOKIE_SECURE": "maybe"}, "ROLLBACK_COOKIE_SECURE"),
])
def test_invalid_web_settings_fail_with_one_line_naming_the_variable(change, variable):
    env = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        WebConfig.from_env(env)
    message = str(info.value)
    assert message.startswith(f"{variable}:") and "\n" not in message


def test_secret_key_rule():
    assert WebConfig.from_env({}).secret_key is None  # no console login: nothing to sign
    debug = WebConfig.from_env({**BASE, "SECRET_KEY": "", "FLASK_DEBUG": "1"})
    assert len(debug.secret_key) == 64  # a per-process key, development only
    config = WebConfig.from_env({**BASE, "ROLLBACK_API_TOKEN": API_TOKEN})
    assert "pw" not in repr(config) and API_TOKEN not in repr(config) and re.search(r"admin_user='ops'", repr(config))
