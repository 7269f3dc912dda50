"""The protected app of the end-to-end tests: a tiny WSGI app served by a thread, whose /readyz
depends on all four things a restore brings back:
- code: the checkout's app.py must not say `BROKEN = True` (the bad revision does);
- data: DATA_BASE_DIR/users.json must be JSON (the bad deploy corrupts it);
- database and Alembic: the database must be at the head of the checkout's migrations.
"""

from __future__ import annotations

import json
import threading

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from rollback import migrations_info, pg
from rollback.errors import RollbackError


def readiness(settings) -> dict[str, tuple[bool, str]]:
    app_py = settings.app_repo_dir / "app.py"
    broken = app_py.exists() and "BROKEN = True" in app_py.read_text()
    try:
        json.loads((settings.data_base_dir / "users.json").read_text())
        data = (True, "users.json readable")
    except (OSError, ValueError) as exc:
        data = (False, f"users.json: {exc}")
    try:
        current, heads = pg.alembic_revision(settings.database), ",".join(migrations_info.code_heads(settings))
        db = (current == heads, f"database at {current}, code head {heads}")
    except RollbackError as exc:
        db = (False, str(exc))
    return {"code": (not broken, "app.py " + ("BROKEN" if broken else "ok")), "data": data, "database": db}


class TargetApp:
    def __init__(self, settings):
        self.settings = settings
        self.httpd = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/readyz"

    @Request.application
    def wsgi(self, request: Request) -> Response:
        if request.path != "/readyz":
            return Response("not found", status=404)
        checks = readiness(self.settings)
        ok = all(passed for passed, _ in checks.values())
        body = {"ok": ok, "checks": {k: {"ok": p, "detail": d} for k, (p, d) in checks.items()}}
        return Response(json.dumps(body), status=200 if ok else 503, mimetype="application/json")

    def stop(self) -> None:
        self.httpd.shutdown()
