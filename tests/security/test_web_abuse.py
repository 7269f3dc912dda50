"""Item 9: abuse of the web console and API, over real HTTP (the app served by werkzeug in a thread).

- 1 000 requests from an address outside ALLOW_ADMIN_ROLLBACK_IPS, each forging the client address
  (X-Forwarded-For with allowlisted addresses, X-Real-IP, Forwarded, several XFF headers, IPv6, ...):
  0 admitted, every one refused (403) and audited; the same behind one trusted proxy, where only the
  address the proxy appends counts;
- missing, wrong, forged CSRF tokens on every console form: refused (400), nothing started;
- missing or wrong Bearer tokens: 401, compared in constant time (hmac.compare_digest; timings recorded);
- the API's rate limit answers 429 with Retry-After;
- a login brute force is slowed (a delay per failure) and then blocked (429), even for the right password.
"""

from __future__ import annotations

import inspect
import random
import re
import statistics
import threading
import time

import pytest
import requests

from rollback.journal import Journal
from tests.faults import figures as F

API = "/admin/rollback/api"
TOKEN = "abuse-api-token-" + "0123456789abcdef"
ADMIN, PASSWORD = "ops", "correct horse battery staple"
ALLOWED = "10.0.0.0/8"
_CSRF = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


class Server:
    def __init__(self, settings, **env):
        from werkzeug.serving import make_server

        from web import create_app
        from web.config import WebConfig

        base = {"ROLLBACK_API_TOKEN": TOKEN, "ROLLBACK_ADMIN_USER": ADMIN, "ROLLBACK_ADMIN_PASSWORD": PASSWORD,
                "SECRET_KEY": "s" * 40, "ROLLBACK_COOKIE_SECURE": "false", "ROLLBACK_LOGIN_FAILURE_DELAY_SEC": "0"}
        config = WebConfig.from_env({**base, **{k: str(v) for k, v in env.items()}})
        self.httpd = make_server("127.0.0.1", 0, create_app(settings, config), threaded=True)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.thread.join(5)


@pytest.fixture
def serve(settings):
    servers = []

    def start(**env) -> Server:
        server = Server(settings, **env)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def audit_count(settings, needle: str) -> int:
    log = settings.rollback_log
    return sum(needle in line for line in log.read_text().splitlines()) if log.exists() else 0


def forged_headers(rng: random.Random) -> list[tuple[str, str]]:
    inside = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    choice = rng.randrange(10)
    return [
        [("X-Forwarded-For", inside)],
        [("X-Forwarded-For", f"{inside}, 127.0.0.1")],
        [("X-Forwarded-For", inside), ("X-Forwarded-For", "10.0.0.1")],
        [("X-Real-IP", inside)],
        [("Forwarded", f"for={inside};proto=https")],
        [("Forwarded", f'for="[::ffff:{inside}]"')],
        [("X-Forwarded-For", f"::ffff:{inside}")],
        [("X-Client-IP", inside), ("True-Client-IP", inside), ("CF-Connecting-IP", inside)],
        [("X-Forwarded-For", f"{inside}:443")],
        [("X-Forwarded-For", f" {inside} ,unknown"), ("X-Forwarded-Host", "localhost")],
    ][choice]


REQUESTS = [("GET", f"{API}/snapshots"), ("POST", f"{API}/restore"), ("POST", f"{API}/snapshot"),
            ("GET", "/admin/rollback/login"), ("POST", "/admin/rollback/login"), ("GET", "/admin/rollback/"),
            ("GET", "/admin/"), ("POST", "/admin/rollback/restore")]


def _send(session: requests.Session, base: str, method: str, path: str, headers: list[tuple[str, str]]):
    req = requests.Request(method, base + path, headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"snapshot_id": "latest", "reason": "forged"} if path.startswith(API) and method == "POST"
                           else None,
                           data={"username": ADMIN, "password": PASSWORD} if "login" in path and method == "POST" else None)
    prepared = session.prepare_request(req)
    for name, value in headers:  # duplicates allowed: several X-Forwarded-For lines
        if name in prepared.headers:
            prepared.headers[name] = prepared.headers[name] + ", " + value
        else:
            prepared.headers[name] = value
    return session.send(prepared, allow_redirects=False, timeout=30)


def test_forged_client_addresses_are_never_admitted(settings, serve, figures):
    from rollback.snapshot import create_snapshot

    create_snapshot(settings)
    rng = random.Random()
    journals_before = len(Journal(settings.backup_dir).all())
    for hops, label in ((0, "no trusted proxy"), (1, "one trusted proxy (the test plays it)")):
        server = serve(ALLOW_ADMIN_ROLLBACK_IPS=ALLOWED, TRUSTED_PROXY_HOPS=hops, ROLLBACK_API_RATE_LIMIT=100000)
        count = F.runs(1000, 1000) if hops == 0 else F.runs(300, 1000)
        case = figures.case(9, f"{count} requests with forged client addresses ({label})")
        denied_before = audit_count(settings, "action=access outcome=denied")
        session = requests.Session()
        statuses = []
        for i in range(count):
            method, path = REQUESTS[i % len(REQUESTS)]
            headers = forged_headers(rng)
            if hops:  # the proxy appends the real client, which is outside the allowlist
                headers = [(n, v) for n, v in headers if n != "X-Forwarded-For"] + \
                          [("X-Forwarded-For", f"10.9.8.7, 203.0.113.{rng.randrange(1, 255)}")]
            statuses.append(_send(session, server.base, method, path, headers).status_code)
        admitted = sum(s < 400 for s in statuses)
        for status in sorted(set(statuses)):
            case.outcomes[f"HTTP {status}"] = statuses.count(status)
        case.runs, case.data_lost = count, admitted
        assert admitted == 0 and set(statuses) == {403}, sorted(set(statuses))
        assert audit_count(settings, "action=access outcome=denied") - denied_before == count
        if hops:  # control: an honest proxy line with an allowlisted client is let in
            ok = _send(session, server.base, "GET", f"{API}/snapshots", [("X-Forwarded-For", "10.1.2.3")])
            assert ok.status_code == 200
    assert len(Journal(settings.backup_dir).all()) == journals_before


def _login_page_token(session, base: str, path: str = "/admin/rollback/login") -> str:
    match = _CSRF.search(session.get(base + path, timeout=30).text)
    assert match, path
    return match.group(1)


def _logged_in(base: str) -> requests.Session:
    session = requests.Session()
    token = _login_page_token(session, base)
    resp = session.post(base + "/admin/rollback/login", data={"csrf_token": token, "username": ADMIN,
                                                               "password": PASSWORD}, allow_redirects=False, timeout=30)
    assert resp.status_code == 302, resp.text[:300]
    return session


def test_forms_refuse_missing_wrong_and_foreign_csrf_tokens(settings, serve, figures):
    from rollback.snapshot import create_snapshot

    snap = create_snapshot(settings)
    server = serve()
    victim, attacker = _logged_in(server.base), _logged_in(server.base)
    foreign = _login_page_token(attacker, server.base, "/admin/rollback/")
    real = _login_page_token(victim, server.base, "/admin/rollback/")
    case = figures.case(9, "console forms with missing / wrong / foreign / header-only CSRF tokens")
    forms = {"/admin/rollback/restore": {"snapshot_id": snap["id"], "reason": "csrf", "confirm": "y"},
             "/admin/rollback/snapshot": {"notes": "csrf"},
             f"/admin/rollback/verify/{snap['id']}": {},
             "/admin/rollback/logout": {}}
    variants = {"missing": {}, "wrong": {"csrf_token": "forged"}, "foreign session": {"csrf_token": foreign},
                "empty": {"csrf_token": ""}, "truncated": {"csrf_token": real[:-4]}}
    journals = len(Journal(settings.backup_dir).all())
    for path, data in forms.items():
        for name, extra in variants.items():
            resp = victim.post(server.base + path, data={**data, **extra}, allow_redirects=False, timeout=30,
                               headers={"Origin": "https://evil.example"})
            case.run(f"HTTP {resp.status_code}", data_lost=int(resp.status_code < 400))
            assert resp.status_code == 400, (path, name, resp.status_code)
        header_only = victim.post(server.base + path, data=data, headers={"X-CSRFToken": foreign}, timeout=30,
                                  allow_redirects=False)
        case.run(f"HTTP {header_only.status_code}", data_lost=int(header_only.status_code < 400))
        assert header_only.status_code == 400
    assert len(Journal(settings.backup_dir).all()) == journals
    assert victim.get(server.base + "/admin/rollback/", allow_redirects=False).status_code == 200  # still logged in


def test_wrong_or_missing_bearer_tokens_get_401_compared_in_constant_time(settings, serve, figures):
    from web import access

    assert "hmac.compare_digest" in inspect.getsource(access.bearer_token_valid)
    server = serve(ROLLBACK_API_RATE_LIMIT=100000)
    case = figures.case(9, "API calls with missing / wrong / malformed Bearer tokens")
    bad = [None, "", "Bearer", "Bearer ", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"bearer  {TOKEN[:-1]}X",
           f"Basic {TOKEN}", f"Token {TOKEN}", f"Bearer {TOKEN.upper()}", f"Bearer {TOKEN}\x00", "Bearer " + "A" * 4096,
           f"Bearer {TOKEN[1:]}", f"{TOKEN}"]
    session = requests.Session()
    for i in range(F.runs(200, 1000)):
        header = bad[i % len(bad)]
        headers = {"Authorization": header} if header is not None else {}
        try:
            resp = session.get(server.base + f"{API}/snapshots", headers=headers, timeout=30)
            status = resp.status_code
        except requests.exceptions.InvalidHeader:
            status = 0  # the client library refused to send it: nothing reached the server
        case.run(f"HTTP {status}" if status else "not sendable", data_lost=int(200 <= status < 400))
        assert status in (0, 401), (header, status)
        if status:
            assert resp.headers.get("WWW-Authenticate") == "Bearer"
    # Timing: a token wrong in its first byte and one wrong in its last byte cost the same.
    first = "X" + TOKEN[1:]
    last = TOKEN[:-1] + "X"
    samples = {first: [], last: []}
    for _ in range(F.runs(150, 600)):
        for token in (first, last):
            t0 = time.perf_counter()
            session.get(server.base + f"{API}/snapshots", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            samples[token].append(time.perf_counter() - t0)
    a, b = statistics.median(samples[first]), statistics.median(samples[last])
    case.note(f"median 401 time: wrong first byte {a * 1e3:.2f} ms, wrong last byte {b * 1e3:.2f} ms")
    ok = session.get(server.base + f"{API}/snapshots", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ok.status_code == 200


def test_rate_limit_answers_429(settings, serve, figures):
    limit = 30
    server = serve(ROLLBACK_API_RATE_LIMIT=limit)
    case = figures.case(9, f"API rate limit ({limit}/min), {2 * limit} calls in a burst")
    session = requests.Session()
    statuses = []
    for _ in range(2 * limit):
        resp = session.get(server.base + f"{API}/snapshots", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert resp.headers.get("Retry-After")
    for status in sorted(set(statuses)):
        case.outcomes[f"HTTP {status}"] = statuses.count(status)
    case.runs = len(statuses)
    # The window is a fixed minute: a burst crossing its edge may get up to twice the limit in.
    assert statuses.count(429) >= len(statuses) - 2 * limit and 429 in statuses, statuses
    assert statuses[: limit].count(200) >= min(limit, statuses.index(429)), statuses
    assert all(s == 429 for s in statuses[statuses.index(429):]), statuses


def test_login_brute_force_is_slowed_then_blocked(settings, serve, figures):
    delay, max_failures = 0.2, 5
    server = serve(ROLLBACK_LOGIN_MAX_FAILURES=max_failures, ROLLBACK_LOGIN_FAILURE_DELAY_SEC=delay,
                   ROLLBACK_LOGIN_WINDOW_SEC=300)
    case = figures.case(9, f"login brute force ({max_failures} failures allowed, {delay}s per failure)")
    session = requests.Session()
    timings, statuses = [], []
    attempts = F.runs(30, 100)
    t_start = time.perf_counter()
    for i in range(attempts):
        token = _login_page_token(session, server.base)
        t0 = time.perf_counter()
        resp = session.post(server.base + "/admin/rollback/login",
                            data={"csrf_token": token, "username": ADMIN, "password": f"guess-{i}"},
                            headers={"X-Forwarded-For": f"10.0.{i}.1"},  # rotating a forged address changes nothing
                            allow_redirects=False, timeout=30)
        timings.append(time.perf_counter() - t0)
        statuses.append(resp.status_code)
    elapsed = time.perf_counter() - t_start
    right = session.post(server.base + "/admin/rollback/login",
                         data={"csrf_token": _login_page_token(session, server.base), "username": ADMIN,
                               "password": PASSWORD}, allow_redirects=False, timeout=30)
    for status in sorted(set(statuses)):
        case.outcomes[f"HTTP {status}"] = statuses.count(status)
    case.runs = attempts
    case.data_lost = int(right.status_code == 302)
    case.note(f"{attempts} guesses took {elapsed:.1f}s; the right password after them: HTTP {right.status_code}")
    assert statuses[:max_failures] == [200] * max_failures  # "wrong password" page
    assert all(t >= delay * 0.9 for t in timings[:max_failures]), timings[:max_failures]
    assert set(statuses[max_failures:]) == {429}
    assert right.status_code == 429  # blocked even for the right password: the guesser learns nothing
    assert audit_count(settings, "action=login outcome=throttled") >= attempts - max_failures
