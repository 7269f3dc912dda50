"""A small client for the parts of Render's public REST API the code step uses.

Endpoints (https://api-docs.render.com, see docs/deploy-render.md for the sources):
- `GET  /v1/services/{serviceId}/deploys?limit=&cursor=&status=` — newest first, a list of
  `{"deploy": {...}, "cursor": "..."}`; the next page starts after the last item's cursor;
- `GET  /v1/services/{serviceId}/deploys/{deployId}` — one deploy object;
- `POST /v1/services/{serviceId}/rollback` with `{"deployId": ...}` — 201 and the new deploy;
- `POST /v1/services/{serviceId}/deploys` with `{"commitId": ...}` — 201 and the new deploy (a rebuild),
  or 202 when Render queues it;
- `PATCH /v1/services/{serviceId}` with `{"autoDeploy": "no"}` — turns automatic deploys off.
Neither POST is documented as idempotent: they are never resent blindly (`_start_deploy`).
Auth is `Authorization: Bearer <RENDER_API_KEY>`; errors carry `{"id", "message"}`.

The key travels only in that header: it is never part of a URL, a message or a log line.
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import quote, urlencode, urlsplit

from .errors import RollbackError
from .logbook import mask_secrets
from .settings import Settings

PAGE_LIMIT = 100  # the API's maximum page size
MAX_PAGES = 50  # 5000 deploys: older ones are far past any snapshot retention
REQUEST_TIMEOUT_SEC = 15.0
MAX_RATE_LIMIT_WAIT_SEC = 30.0  # longer waits fail fast with the hint instead of blocking a restore
RETRIES = 3

# Deploy statuses (the API's deployStatus enum).
LIVE = "live"
PRE_DEPLOY = "pre_deploy_in_progress"
ROLLBACK_TARGETS = ("live", "deactivated")  # deploys that ran: Render can go back to their build
FAILED = ("build_failed", "update_failed", "canceled", "deactivated", "pre_deploy_failed")
# Deploy triggers (the API's enum): a rollback reuses a build, a deploy through the API builds one.
TRIGGER_ROLLBACK = "rollback"
TRIGGER_API = "api"
RECENT = 20  # deploys listed to find one a failed POST may still have created


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
    trigger: str | None = None

    @classmethod
    def from_api(cls, obj: dict) -> "Deploy":
        commit = obj.get("commit") or {}
        return cls(id=obj["id"], commit=commit.get("id"), status=obj.get("status", ""),
                   created_at=obj.get("createdAt"), trigger=obj.get("trigger"))

    def of(self, revision: str) -> bool:
        return bool(self.commit) and _same_commit(self.commit, revision)


class RenderClient:
    def __init__(self, api_url: str, api_key: str, service_id: str,
                 sleep: Callable[[float], None] = time.sleep, timeout: float = REQUEST_TIMEOUT_SEC):
        if not api_key or not service_id:
            raise RollbackError("the render code strategy needs RENDER_API_KEY and RENDER_SERVICE_ID")
        self.api_url = api_url.rstrip("/")
        self.service_id = service_id
        self._key = api_key
        self.sleep = sleep
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> "RenderClient":
        return cls(settings.render_api_url, settings.render_api_key or "", settings.render_service_id or "")

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

    def recent_deploys(self) -> list[Deploy]:
        page = self._call("GET", f"{self._service_path()}/deploys", query=[("limit", str(RECENT))])
        if not isinstance(page, list):
            raise RenderApiError("Render API: list deploys did not return a list")
        return [Deploy.from_api(item["deploy"]) for item in page]

    def rollback(self, target: Deploy) -> Deploy:
        """Ask Render to deploy the build of `target` again; returns the new (rollback) deploy."""
        return self._start_deploy(f"{self._service_path()}/rollback", {"deployId": target.id},
                                  lambda d: d.trigger == TRIGGER_ROLLBACK and d.of(target.commit or ""))

    def deploy_commit(self, revision: str) -> Deploy:
        """Ask Render to build and deploy `revision` (slower than a rollback: a full build)."""
        return self._start_deploy(f"{self._service_path()}/deploys", {"commitId": revision},
                                  lambda d: d.trigger != TRIGGER_ROLLBACK and d.of(revision))

    def set_auto_deploy(self, enabled: bool) -> None:
        self._call("PATCH", self._service_path(), body={"autoDeploy": "yes" if enabled else "no"})

    def live_deploy(self) -> Deploy | None:
        return next(self.iter_deploys(statuses=(LIVE,)), None)

    def deploy_in_pre_deploy(self) -> Deploy | None:
        """The deploy whose pre-deploy command runs now (Render runs one deploy of a service at a time)."""
        return next(self.iter_deploys(statuses=(PRE_DEPLOY,)), None)

    def _start_deploy(self, path: str, body: dict, caused_by_us: Callable[[Deploy], bool]) -> Deploy:
        """POST a deploy without ever starting two: after a 5xx or a timeout the request may have been
        carried out, so the recent deploys are listed first and a new one matching it is adopted; only
        when there is none is the POST sent again. A 202 (queued, no body) is looked up, never resent."""
        before = {d.id for d in self.recent_deploys()}
        posts, error = 0, None
        for attempt in range(2 * RETRIES + 1):
            if attempt:  # the previous POST failed, timed out or was queued: did it start a deploy?
                self.sleep(0.5 * 2 ** min(attempt - 1, 4))
                adopted = next((d for d in self.recent_deploys() if d.id not in before and caused_by_us(d)), None)
                if adopted is not None:
                    return adopted
                if error is None or posts > RETRIES:  # queued: wait for it to be listed; or out of tries
                    continue
            try:
                posts += 1
                created = self._call("POST", path, body=body, resend_on_server_error=False)
            except RenderApiError as exc:
                if not (exc.status >= 500 or exc.status == 0):
                    raise
                error = exc
                continue
            if isinstance(created, dict) and created.get("id"):
                return Deploy.from_api(created)
            error = None
        if error is not None:
            raise error
        raise RenderApiError(f"Render API: POST {path} was accepted (queued) but no new deploy appeared")

    # -- transport ---------------------------------------------------------------------------
    def _service_path(self) -> str:
        return f"/services/{quote(self.service_id, safe='')}"

    def _call(self, method: str, path: str, query: list | None = None, body: dict | None = None,
              resend_on_server_error: bool = True):
        """One API call with bounded retries of 429 (waiting as told: Render did not carry it out) and,
        unless told not to, of 5xx/unreachable (backoff)."""
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
                if not resend_on_server_error or not (exc.status >= 500 or exc.status == 0) or attempt == RETRIES:
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
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
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
ALREADY_LIVE, ROLLBACK, REBUILD = "already_live", "rollback", "rebuild"


@dataclass(frozen=True)
class CodePlan:
    """How the code of `revision` comes back: nothing to do, a rollback to the retained build of
    `deploy`, or a rebuild of the commit (its build is past Render's retention)."""
    action: str
    revision: str
    deploy: Deploy

    def describe(self) -> str:
        short = self.revision[:12]
        if self.action == ALREADY_LIVE:
            return f"Render deploy {self.deploy.id} of {short} is already live"
        if self.action == ROLLBACK:
            return f"Render rollback to deploy {self.deploy.id} ({short})"
        return (f"Render rebuild of commit {short} (the build of deploy {self.deploy.id} is past the "
                f"retention, RENDER_BUILD_RETENTION): slower than a rollback")


def plan_code_restore(client: RenderClient, revision: str, retention: int) -> CodePlan:
    """Decide, without changing anything, how Render can bring `revision` back; raise when it cannot.
    A build counts as retained when it is among the `retention` newest builds (deploys that ran and
    were not themselves rollbacks, which reuse a build)."""
    seen = 0
    builds: list[Deploy] = []
    of_revision: list[Deploy] = []
    for deploy in client.iter_deploys():
        seen += 1
        if deploy.status == LIVE and deploy.of(revision):
            return CodePlan(ALREADY_LIVE, revision, deploy)
        if deploy.status in ROLLBACK_TARGETS and deploy.trigger != TRIGGER_ROLLBACK:
            builds.append(deploy)
        if deploy.of(revision):
            of_revision.append(deploy)
            ran = [d for d in of_revision if d.status in ROLLBACK_TARGETS]
            if ran and any(b.of(revision) for b in builds[:retention]):
                return CodePlan(ROLLBACK, revision, ran[0])
        if len(builds) > retention and any(d.status in ROLLBACK_TARGETS for d in of_revision):
            break  # older builds are gone: only a rebuild can bring this commit back
    ran = [d for d in of_revision if d.status in ROLLBACK_TARGETS]
    if ran:
        return CodePlan(REBUILD, revision, ran[0])
    if of_revision:
        states = ", ".join(f"{d.id} {d.status}" for d in of_revision[:3])
        raise RollbackError(f"Render has no successful deploy of commit {revision[:12]} to roll back to "
                            f"(found: {states})")
    raise RollbackError(f"Render service {client.service_id} has no deploy of commit {revision[:12]} "
                        f"among its {seen} deploys")


def find_rollback_target(client: RenderClient, revision: str) -> Deploy:
    """The newest deploy of `revision` that went live (so Render ran its build), ignoring retention."""
    plan = plan_code_restore(client, revision, retention=MAX_PAGES * PAGE_LIMIT)
    return plan.deploy


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
            hint = (": its pre-deploy command failed (the deploy's logs in the Render Dashboard say why)"
                    if deploy.status == "pre_deploy_failed" else "")
            raise RollbackError(f"Render rollback deploy {deploy_id} ended {deploy.status}{hint}")
        if clock() >= deadline:
            raise RollbackError(f"Render rollback deploy {deploy_id} not live within {timeout:g} s "
                                f"(last status: {deploy.status})")
        client.sleep(interval)


# -- the pre-deploy hook's question ----------------------------------------------------------------
def restore_deploy_in_pre_deploy(client: RenderClient, commit: str) -> Deploy | None:
    """The deploy whose pre-deploy runs now, when it is one a restore starts (a rollback or an API
    deploy) of `commit`: Render gives the pre-deploy command RENDER_GIT_COMMIT but no deploy id."""
    deploy = client.deploy_in_pre_deploy()
    if deploy and deploy.of(commit) and deploy.trigger in (TRIGGER_ROLLBACK, TRIGGER_API):
        return deploy
    return None


def main(argv: list[str]) -> int:
    """`python -m rollback.render restore-deploy COMMIT` (for scripts/deploy_hook.sh): exit 0 and name
    the deploy when the deploy in its pre-deploy step is a rollback or API deploy of COMMIT, 1 when not,
    2 when it cannot tell."""
    if len(argv) != 2 or argv[0] != "restore-deploy" or not argv[1].strip():
        print("usage: python -m rollback.render restore-deploy COMMIT", file=sys.stderr)
        return 2
    try:
        deploy = restore_deploy_in_pre_deploy(RenderClient.from_settings(Settings.from_env()), argv[1].strip())
    except RollbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if deploy is None:
        return 1
    print(f"{deploy.id} ({deploy.trigger} deploy of {argv[1].strip()[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
