"""A small client for the parts of Render's public REST API the code step uses.

Endpoints (https://api-docs.render.com, see docs/deploy-render.md for the sources):
- `GET  /v1/services/{serviceId}/deploys?limit=&cursor=&status=` — newest first, a list of
  `{"deploy": {...}, "cursor": "..."}`; the next page starts after the last item's cursor;
- `GET  /v1/services/{serviceId}/deploys/{deployId}` — one deploy object;
- `POST /v1/services/{serviceId}/rollback` with `{"deployId": ...}` — 201 and the new deploy.
Auth is `Authorization: Bearer <RENDER_API_KEY>`; errors carry `{"id", "message"}`.

The key travels only in that header: it is never part of a URL, a message or a log line.
"""

from __future__ import annotations

import email.utils
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import quote, urlencode, urlsplit

from .errors import RollbackError
from .logbook import mask_secrets

PAGE_LIMIT = 100  # the API's maximum page size
MAX_PAGES = 50  # 5000 deploys: older ones are far past any snapshot retention
REQUEST_TIMEOUT_SEC = 15.0
MAX_RATE_LIMIT_WAIT_SEC = 30.0  # longer waits fail fast with the hint instead of blocking a restore
RETRIES = 3

# Deploy statuses (the API's deployStatus enum).
LIVE = "live"
ROLLBACK_TARGETS = ("live", "deactivated")  # deploys that ran: Render can go back to their build
FAILED = ("build_failed", "update_failed", "canceled", "deactivated", "pre_deploy_failed")


class RenderApiError(RollbackError):
    """A Render API call failed; `status` is the HTTP status (0 when unreachable)."""

    def __init__(self, message: str, status: int = 0):
        Exception.__init__(self, message, status)
        self.message = message
        self.status = status


class RenderRateLimited(RenderApiError):
    def __init__(self, message: str, retry_after: float | None = None):
        Exception.__init__(self, message, retry_after)
        self.message = message
        self.status = 429
        self.retry_after = retry_after


@dataclass(frozen=True)
class Deploy:
    id: str
    commit: str | None
    status: str
    created_at: str | None = None

    @classmethod
    def from_api(cls, obj: dict) -> "Deploy":
        commit = obj.get("commit") or {}
        return cls(id=obj["id"], commit=commit.get("id"), status=obj.get("status", ""),
                   created_at=obj.get("createdAt"))


class RenderClient:
    def __init__(self, api_url: str, api_key: str, service_id: str,
                 sleep: Callable[[float], None] = time.sleep):
        if not api_key or not service_id:
            raise RollbackError("the render code strategy needs RENDER_API_KEY and RENDER_SERVICE_ID")
        self.api_url = api_url.rstrip("/")
        self.service_id = service_id
        self._key = api_key
        self.sleep = sleep

    # -- endpoints ---------------------------------------------------------------------------
    def iter_deploys(self, statuses: tuple[str, ...] = ()) -> Iterator[Deploy]:
        """Every deploy of the service, newest first, following the cursor page by page."""
        cursor = None
        for _ in range(MAX_PAGES):
            query = [("limit", str(PAGE_LIMIT))] + [("status", s) for s in statuses]
            if cursor:
                query.append(("cursor", cursor))
            page = self._call("GET", f"{self._service_path()}/deploys", query=query)
            if not isinstance(page, list):
                raise RenderApiError("Render API: list deploys did not return a list")
            for item in page:
                yield Deploy.from_api(item["deploy"])
            if len(page) < PAGE_LIMIT:
                return
            cursor = page[-1].get("cursor")
            if not cursor:
                return

    def get_deploy(self, deploy_id: str) -> Deploy:
        return Deploy.from_api(self._call("GET", f"{self._service_path()}/deploys/{quote(deploy_id, safe='')}"))

    def rollback(self, deploy_id: str) -> Deploy:
        """Ask Render to deploy the build of `deploy_id` again; returns the new (rollback) deploy."""
        return Deploy.from_api(self._call("POST", f"{self._service_path()}/rollback", body={"deployId": deploy_id}))

    def live_deploy(self) -> Deploy | None:
        return next(self.iter_deploys(statuses=(LIVE,)), None)

    # -- transport ---------------------------------------------------------------------------
    def _service_path(self) -> str:
        return f"/services/{quote(self.service_id, safe='')}"

    def _call(self, method: str, path: str, query: list | None = None, body: dict | None = None):
        """One API call with bounded retries of 429 (waiting as told) and 5xx/unreachable (backoff)."""
        url = self.api_url + path + (f"?{urlencode(query)}" if query else "")
        for attempt in range(RETRIES + 1):
            try:
                return self._send(method, url, body)
            except RenderRateLimited as exc:
                wait = exc.retry_after if exc.retry_after is not None else 2.0 ** attempt
                if attempt == RETRIES or wait > MAX_RATE_LIMIT_WAIT_SEC:
                    raise
                self.sleep(wait)
            except RenderApiError as exc:
                if not (exc.status >= 500 or exc.status == 0) or attempt == RETRIES:
                    raise
                self.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, body: dict | None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._key}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        what = f"{method} {urlsplit(url).path}"
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SEC) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._error(what, exc) from None
        except (urllib.error.URLError, OSError) as exc:
            host = urlsplit(url).netloc
            raise RenderApiError(f"Render API at {host} unreachable ({getattr(exc, 'reason', exc)}) on {what}") from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise RenderApiError(f"Render API returned invalid JSON on {what}") from None

    def _error(self, what: str, exc: urllib.error.HTTPError) -> RenderApiError:
        detail = _error_message(exc)
        status = exc.code
        if status == 401:
            return RenderApiError(f"Render API refused RENDER_API_KEY (401 Unauthorized) on {what}: "
                                  f"create a new key in the Render Dashboard", status)
        if status == 403:
            return RenderApiError(f"Render API: the key may not access service {self.service_id} "
                                  f"(403 Forbidden) on {what}{detail}", status)
        if status == 404:
            return RenderApiError(f"Render API: not found (404) on {what}: check RENDER_SERVICE_ID "
                                  f"{self.service_id} and the deploy id{detail}", status)
        if status == 429:
            retry_after = _retry_after(exc.headers)
            hint = f"; retry after {retry_after:.0f} s" if retry_after is not None else ""
            return RenderRateLimited(f"Render API rate limit reached (429) on {what}{hint}", retry_after)
        return RenderApiError(f"Render API error {status} on {what}{detail}", status)


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The `message` of Render's error body, if any, masked and shortened."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {mask_secrets(str(message))[:300]}" if message else ""


def _retry_after(headers) -> float | None:
    """Seconds to wait: Retry-After (seconds or HTTP date), else Render's Ratelimit-Reset."""
    raw = (headers.get("Retry-After") or "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return _seconds_until_http_date(raw)
    reset = (headers.get("Ratelimit-Reset") or "").strip()
    try:
        value = float(reset)
    except ValueError:
        return None
    # Documented as epoch seconds, shown in examples as seconds left: accept both.
    return max(0.0, value - time.time()) if value > 1e9 else value


def _seconds_until_http_date(raw: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -- what the code step needs ------------------------------------------------------------------
def find_rollback_target(client: RenderClient, revision: str) -> Deploy:
    """The newest deploy of `revision` that went live (so Render has its build); raise otherwise."""
    seen = 0
    of_revision: list[Deploy] = []
    for deploy in client.iter_deploys():
        seen += 1
        if deploy.commit and _same_commit(deploy.commit, revision):
            if deploy.status in ROLLBACK_TARGETS:
                return deploy
            of_revision.append(deploy)
    if of_revision:
        states = ", ".join(f"{d.id} {d.status}" for d in of_revision[:3])
        raise RollbackError(f"Render has no successful deploy of commit {revision[:12]} to roll back to "
                            f"(found: {states})")
    raise RollbackError(f"Render service {client.service_id} has no deploy of commit {revision[:12]} "
                        f"among its {seen} deploys")


def _same_commit(a: str, b: str) -> bool:
    """Full SHAs compare equal; an abbreviated one (>= 7 hex digits) matches as a prefix."""
    short, full = sorted((a.lower(), b.lower()), key=len)
    return len(short) >= 7 and full.startswith(short)


def wait_until_live(client: RenderClient, deploy_id: str, timeout: float, interval: float,
                    progress: Callable[[str], None] = lambda m: None,
                    clock: Callable[[], float] = time.monotonic) -> Deploy:
    """Poll the deploy until it is live; raise when it fails or the timeout passes."""
    deadline = clock() + timeout
    while True:
        deploy = client.get_deploy(deploy_id)
        progress(f"Render deploy {deploy_id}: {deploy.status}")
        if deploy.status == LIVE:
            return deploy
        if deploy.status in FAILED:
            raise RollbackError(f"Render rollback deploy {deploy_id} ended {deploy.status}")
        if clock() >= deadline:
            raise RollbackError(f"Render rollback deploy {deploy_id} not live within {timeout:g} s "
                                f"(last status: {deploy.status})")
        client.sleep(interval)
