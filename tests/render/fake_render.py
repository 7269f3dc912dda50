"""A local stand-in for the three Render API endpoints the render code strategy uses, with their
real paths and payload shapes (docs/deploy-render.md cites the sources):

- GET  /v1/services/{serviceId}/deploys?limit=&cursor=&status=  -> [{"deploy": {...}, "cursor": "..."}]
  newest first; `limit` defaults to 20, at most 100; the next page starts after `cursor`;
- GET  /v1/services/{serviceId}/deploys/{deployId}             -> {deploy}
- POST /v1/services/{serviceId}/rollback  {"deployId": "..."}   -> 201 {deploy}

Auth is `Authorization: Bearer <key>` (401 otherwise); errors are `{"id", "message"}`. `faults`
queues canned error responses (429 with Retry-After, 5xx ...) served before normal routing. A
rollback deploy goes live after `rollout_polls` GETs of it (then `on_live` runs, which is how a
test plays Render restarting the service on the old code).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

IN_PROGRESS = ("created", "queued", "build_in_progress", "update_in_progress", "pre_deploy_in_progress")


@dataclass
class Fault:
    status: int
    headers: dict = field(default_factory=dict)
    body: dict | None = None


class FakeRender:
    def __init__(self, api_key: str = "rnd_fakeSECRETkey0123456789", service_id: str = "srv-test0001"):
        self.api_key, self.service_id = api_key, service_id
        self.deploys: list[dict] = []  # newest first, as the API lists them
        self.requests: list[dict] = []
        self.faults: list[Fault] = []
        self.rollout_polls = 2
        self.rollout_result = "live"
        self.on_live: Callable[[dict], None] = lambda deploy: None
        self._polls: dict[str, int] = {}
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

    # -- state -----------------------------------------------------------------------------------
    def add_deploy(self, commit: str, status: str = "live", trigger: str = "new_commit") -> dict:
        """A new deploy on top of the list; a live one deactivates the previous live deploy."""
        with self._lock:
            deploy = {"id": f"dep-{secrets.token_hex(10)}", "status": status, "trigger": trigger,
                      "commit": {"id": commit, "message": f"commit {commit[:7]}", "createdAt": "2026-01-01T00:00:00Z"},
                      "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
            if status == "live":
                self._deactivate_live()
            self.deploys.insert(0, deploy)
            return deploy

    def live(self) -> dict | None:
        return next((d for d in self.deploys if d["status"] == "live"), None)

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
            if self.faults:
                fault = self.faults.pop(0)
                return fault.status, fault.headers, fault.body or {"id": "error", "message": f"fault {fault.status}"}
            if auth != f"Bearer {self.api_key}":
                return 401, {}, {"id": "unauthorized", "message": "unauthorized"}
            parts = path.strip("/").split("/")  # v1 services {id} deploys [{deployId}] | rollback
            if len(parts) < 4 or parts[:2] != ["v1", "services"]:
                return 404, {}, {"id": "not_found", "message": "not found"}
            if parts[2] != self.service_id:
                return 404, {}, {"id": "not_found", "message": "service not found"}
            if method == "GET" and parts[3:] == ["deploys"]:
                return self._list(query)
            if method == "GET" and len(parts) == 5 and parts[3] == "deploys":
                return self._retrieve(parts[4])
            if method == "POST" and parts[3:] == ["rollback"]:
                return self._rollback(body or {})
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
        left = self._polls.get(deploy["id"], self.rollout_polls) - 1
        self._polls[deploy["id"]] = left
        if left > 0:
            deploy["status"] = "update_in_progress"
            return
        if self.rollout_result == "live":
            self._deactivate_live()
            deploy["status"] = "live"
            self.on_live(deploy)
        else:
            deploy["status"] = self.rollout_result

    def _rollback(self, body: dict):
        target = self._find(str(body.get("deployId", "")))
        if target is None:
            return 404, {}, {"id": "not_found", "message": "deploy not found"}
        if target["status"] not in ("live", "deactivated"):
            return 400, {}, {"id": "bad_request", "message": f"cannot roll back to a {target['status']} deploy"}
        deploy = self.add_deploy(target["commit"]["id"], status="created", trigger="rollback")
        return 201, {}, deploy


def _handler(fake: FakeRender):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, headers, payload = fake.handle(method, parts.path, parse_qs(parts.query), body,
                                                   self.headers.get("Authorization"))
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def log_message(self, *args):  # keep test output clean
            return

    return Handler
