"""A local stand-in for the Render API endpoints the render code strategy uses, with their real paths
and payload shapes (docs/deploy-render.md cites the sources):

- GET   /v1/services/{serviceId}/deploys?limit=&cursor=&status=  -> [{"deploy": {...}, "cursor": "..."}]
  newest first; `limit` defaults to 20, at most 100; the next page starts after `cursor`;
- GET   /v1/services/{serviceId}/deploys/{deployId}             -> {deploy}
- POST  /v1/services/{serviceId}/rollback  {"deployId": "..."}   -> 201 {deploy}, trigger `rollback`
- POST  /v1/services/{serviceId}/deploys   {"commitId": "..."}   -> 201 {deploy}, trigger `api` (a build)
- PATCH /v1/services/{serviceId}           {"autoDeploy": "yes"|"no"} -> 200 {service}

Auth is `Authorization: Bearer <key>` (401 otherwise); errors are `{"id", "message"}`.

What Render does and the fake copies:
- only the `build_retention` newest builds are kept: a rollback to a deploy whose build is older is
  refused with 400 (a rollback reuses its target's build; a deploy through the API builds anew);
- a new deploy goes `queued` → (`build_in_progress`, for a build) → `pre_deploy_in_progress` →
  `update_in_progress` → `live`, one stage per GET of it. In `pre_deploy_in_progress` the configured
  `pre_deploy_command` runs (like render.yaml's preDeployCommand, with RENDER_GIT_COMMIT of the deploy);
  the deploy stays there until it exits, then goes on, or ends `pre_deploy_failed` on a non-zero exit;
- the auto-deploy flag: `push(commit)` deploys the commit only while it is "yes".

`faults` queues canned error responses served before normal routing; `Fault(apply=True)` first carries
the request out (Render did it, the answer was lost), `delay` holds the answer back (a client timeout).
When a deploy goes live `on_live` runs, which is how a test plays Render restarting the service.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

IN_PROGRESS = ("created", "queued", "build_in_progress", "update_in_progress", "pre_deploy_in_progress")
RAN = ("live", "deactivated")
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Fault:
    status: int
    headers: dict = field(default_factory=dict)
    body: dict | None = None
    apply: bool = False  # carry the request out, then answer with this fault
    delay: float = 0.0  # seconds before the answer (longer than the client's timeout: a timeout)


class FakeRender:
    def __init__(self, api_key: str = "rnd_fakeSECRETkey0123456789", service_id: str = "srv-test0001"):
        self.api_key, self.service_id = api_key, service_id
        self.deploys: list[dict] = []  # newest first, as the API lists them
        self.requests: list[dict] = []
        self.faults: list[Fault] = []
        self.build_retention: int | None = None  # None: every build is kept
        self.auto_deploy = "yes"
        self.pre_deploy_command: str | None = None  # a shell command, as in render.yaml
        self.pre_deploy_env: dict[str, str] = {}
        self.pre_deploy_runs: list[dict] = []  # {"deploy", "returncode", "output"}
        self.rollout_result = "live"  # the last stage's outcome (an in-progress status stalls there)
        self.on_live: Callable[[dict], None] = lambda deploy: None
        self._stages: dict[str, list[str]] = {}
        self._build_of: dict[str, str] = {}
        self._hooks: dict[str, threading.Thread] = {}
        self._clock = 0
        self._lock = threading.RLock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def start(self) -> "FakeRender":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for hook in list(self._hooks.values()):
            hook.join(timeout=60)

    # -- state -----------------------------------------------------------------------------------
    def add_deploy(self, commit: str, status: str = "live", trigger: str = "new_commit",
                   build_of: str | None = None) -> dict:
        """A new deploy on top of the list; a live one deactivates the previous live deploy."""
        with self._lock:
            self._clock += 1
            at = (EPOCH + timedelta(minutes=self._clock)).strftime("%Y-%m-%dT%H:%M:%SZ")
            deploy = {"id": f"dep-{secrets.token_hex(10)}", "status": status, "trigger": trigger,
                      "commit": {"id": commit, "message": f"commit {commit[:7]}", "createdAt": at},
                      "createdAt": at, "updatedAt": at}
            self._build_of[deploy["id"]] = build_of or deploy["id"]
            if status == "live":
                self._deactivate_live()
            self.deploys.insert(0, deploy)
            return deploy

    def push(self, commit: str) -> dict | None:
        """A push to the linked branch: deployed (and live) only while auto-deploy is on."""
        with self._lock:
            return self.add_deploy(commit, status="live") if self.auto_deploy == "yes" else None

    def live(self) -> dict | None:
        return next((d for d in self.deploys if d["status"] == "live"), None)

    def created_by(self, trigger: str) -> list[dict]:
        return [d for d in self.deploys if d["trigger"] == trigger]

    def retained_builds(self) -> list[str]:
        builds = [self._build_of[d["id"]] for d in self.deploys
                  if d["status"] in RAN and d["trigger"] != "rollback"]
        return builds if self.build_retention is None else builds[:self.build_retention]

    def _deactivate_live(self) -> None:
        for d in self.deploys:
            if d["status"] == "live":
                d["status"] = "deactivated"

    def _find(self, deploy_id: str) -> dict | None:
        return next((d for d in self.deploys if d["id"] == deploy_id), None)

    # -- endpoints -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: dict | None, auth: str | None):
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "body": body, "auth": auth})
            fault = self.faults.pop(0) if self.faults else None
            if fault is None or fault.apply:
                answer = self._route(method, path, query, body, auth)
        if fault is None:
            return answer
        if fault.delay:
            time.sleep(fault.delay)
        return fault.status, fault.headers, fault.body or {"id": "error", "message": f"fault {fault.status}"}

    def _route(self, method: str, path: str, query: dict, body: dict | None, auth: str | None):
        if auth != f"Bearer {self.api_key}":
            return 401, {}, {"id": "unauthorized", "message": "unauthorized"}
        parts = path.strip("/").split("/")  # v1 services {id} [deploys [{deployId}] | rollback]
        if len(parts) < 3 or parts[:2] != ["v1", "services"]:
            return 404, {}, {"id": "not_found", "message": "not found"}
        if parts[2] != self.service_id:
            return 404, {}, {"id": "not_found", "message": "service not found"}
        if method == "PATCH" and len(parts) == 3:
            return self._update_service(body or {})
        if method == "GET" and parts[3:] == ["deploys"]:
            return self._list(query)
        if method == "GET" and len(parts) == 5 and parts[3] == "deploys":
            return self._retrieve(parts[4])
        if method == "POST" and parts[3:] == ["rollback"]:
            return self._rollback(body or {})
        if method == "POST" and parts[3:] == ["deploys"]:
            return self._deploy(body or {})
        return 404, {}, {"id": "not_found", "message": "not found"}

    def _list(self, query: dict):
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            return 400, {}, {"id": "bad_request", "message": "limit must be an integer"}
        if not 1 <= limit <= 100:
            return 400, {}, {"id": "bad_request", "message": "limit must be between 1 and 100"}
        statuses = set(query.get("status", []))
        items = [d for d in self.deploys if not statuses or d["status"] in statuses]
        start = 0
        if "cursor" in query:
            after = base64.b64decode(query["cursor"][0]).decode()
            start = next((i + 1 for i, d in enumerate(items) if d["id"] == after), len(items))
        page = items[start:start + limit]
        return 200, {}, [{"deploy": d, "cursor": base64.b64encode(d["id"].encode()).decode()} for d in page]

    def _retrieve(self, deploy_id: str):
        deploy = self._find(deploy_id)
        if deploy is None:
            return 404, {}, {"id": "not_found", "message": "deploy not found"}
        if deploy["status"] in IN_PROGRESS:
            self._advance(deploy)
        return 200, {}, deploy

    def _advance(self, deploy: dict) -> None:
        stages = self._stages.setdefault(deploy["id"], [])
        if deploy["status"] == "pre_deploy_in_progress":
            hook = self._hooks.get(deploy["id"])
            if hook is not None and hook.is_alive():
                return  # Render waits for the pre-deploy command
            run = next((r for r in self.pre_deploy_runs if r["deploy"] == deploy["id"]), None)
            if run is not None and run["returncode"] != 0:
                deploy["status"] = "pre_deploy_failed"
                return
        if not stages:
            deploy["status"] = self.rollout_result
            if self.rollout_result == "live":
                self._deactivate_live()
                deploy["status"] = "live"
                self.on_live(deploy)
            return
        deploy["status"] = stages.pop(0)
        if deploy["status"] == "pre_deploy_in_progress" and self.pre_deploy_command:
            hook = threading.Thread(target=self._run_pre_deploy, args=(dict(deploy),), daemon=True)
            self._hooks[deploy["id"]] = hook
            hook.start()

    def _run_pre_deploy(self, deploy: dict) -> None:
        env = {**os.environ, **self.pre_deploy_env, "RENDER_GIT_COMMIT": deploy["commit"]["id"],
               "RENDER_SERVICE_ID": self.service_id}
        returncode, output = -1, ""
        try:
            done = subprocess.run(["bash", "-c", self.pre_deploy_command], env=env, capture_output=True,
                                  text=True, timeout=600)
            returncode, output = done.returncode, done.stdout + done.stderr
        except (OSError, subprocess.SubprocessError) as exc:
            output = f"the fake could not run the pre-deploy command: {exc}"
        finally:
            with self._lock:
                self.pre_deploy_runs.append({"deploy": deploy["id"], "returncode": returncode, "output": output})

    def _start(self, commit: str, trigger: str, build_of: str | None, builds: bool) -> dict:
        deploy = self.add_deploy(commit, status="created", trigger=trigger, build_of=build_of)
        self._stages[deploy["id"]] = ["queued"] + (["build_in_progress"] if builds else []) + \
            ["pre_deploy_in_progress", "update_in_progress"]
        return deploy

    def _rollback(self, body: dict):
        target = self._find(str(body.get("deployId", "")))
        if target is None:
            return 404, {}, {"id": "not_found", "message": "deploy not found"}
        if target["status"] not in RAN:
            return 400, {}, {"id": "bad_request", "message": f"cannot roll back to a {target['status']} deploy"}
        build = self._build_of[target["id"]]
        if build not in self.retained_builds():
            return 400, {}, {"id": "bad_request",
                             "message": f"the build of deploy {target['id']} is no longer available"}
        return 201, {}, self._start(target["commit"]["id"], "rollback", build, builds=False)

    def _deploy(self, body: dict):
        commit = str(body.get("commitId", "")).strip()
        if not commit:
            return 400, {}, {"id": "bad_request", "message": "commitId is required by this fake"}
        return 201, {}, self._start(commit, "api", None, builds=True)

    def _update_service(self, body: dict):
        value = body.get("autoDeploy")
        if value not in ("yes", "no"):
            return 400, {}, {"id": "bad_request", "message": "autoDeploy must be yes or no"}
        self.auto_deploy = value
        return 200, {}, {"id": self.service_id, "type": "web_service", "autoDeploy": value}


def _handler(fake: FakeRender):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, headers, payload = fake.handle(method, parts.path, parse_qs(parts.query), body,
                                                   self.headers.get("Authorization"))
            raw = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)
            except OSError:  # the client gave up waiting (a timeout test)
                pass

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PATCH(self):  # noqa: N802
            self._serve("PATCH")

        def log_message(self, *args):  # keep test output clean
            return

    return Handler
