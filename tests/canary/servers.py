"""Small local HTTP servers for canary tests: a /readyz whose answers a test scripts, and a webhook
receiver that records the alerts POSTed to it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        return

    def reply(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class ScriptedReadyz(_Server):
    """GET /readyz answers `status_for(n)` for the n-th request (0-based): "ok", "fail", "flap"
    (200, 503, 200, ...) or any callable."""

    MODES: dict[str, Callable[[int], int]] = {
        "ok": lambda n: 200,
        "fail": lambda n: 503,
        "flap": lambda n: 200 if n % 2 == 0 else 503,
    }

    def __init__(self, mode: str | Callable[[int], int] = "ok"):
        self.set(mode)
        self.count = 0
        self._lock = threading.Lock()

        class Handler(_Quiet):
            def do_GET(self):  # noqa: N802
                owner = self.server.owner
                with owner._lock:
                    n, owner.count = owner.count, owner.count + 1
                status = owner.status_for(n)
                self.reply(status, {"ok": status == 200})

        super().__init__(Handler)

    def set(self, mode) -> None:
        self.status_for = self.MODES[mode] if isinstance(mode, str) else mode

    @property
    def url(self) -> str:
        return f"{self.base}/readyz"


class WebhookReceiver(_Server):
    """Records the JSON bodies POSTed to it; answers `status`."""

    def __init__(self, status: int = 200):
        self.status = status
        self.messages: list[dict] = []

        class Handler(_Quiet):
            def do_POST(self):  # noqa: N802
                owner = self.server.owner
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.messages.append({"content_type": self.headers.get("Content-Type"), "json": json.loads(body)})
                self.reply(owner.status, {"ok": owner.status == 200})

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"{self.base}/hooks/T000/B000/secretpath"

    def texts(self) -> list[str]:
        return [m["json"]["text"] for m in self.messages]


def app_settings(env: dict, readyz_url: str):
    """Settings for a migrated, seeded app database whose readiness is judged by `readyz_url`
    (instead of the web app of tests/conftest.py: canary tests script their own /readyz)."""
    from rollback.settings import Settings
    from tests import state

    base = Settings.from_env(env)
    state.migrate(base, "head")
    state.seed_rows(base)
    return base.with_overrides(readyz_url=readyz_url)
