"""Flask app factory: /healthz and /readyz (issue B adds the admin console and the API)."""

from __future__ import annotations

import time

from flask import Flask, jsonify

from rollback import migrations_info, pg
from rollback.errors import RollbackError
from rollback.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask(__name__)
    app.config["ROLLBACK_SETTINGS"] = settings or Settings.from_env()

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    @app.get("/readyz")
    def readyz():
        checks = {"database": _check_revision(app.config["ROLLBACK_SETTINGS"])}
        ok = all(c["ok"] for c in checks.values())
        return jsonify(ok=ok, checks=checks), (200 if ok else 503)

    return app


def _check_revision(settings: Settings) -> dict:
    """Database reachable and at the head revision of the deployed migrations."""
    started = time.monotonic()
    try:
        current = pg.alembic_revision(settings.database)
        heads = ",".join(migrations_info.code_heads(settings)) or None
        ok, detail = current == heads, f"database at {current}, code head {heads}"
    except RollbackError as exc:
        ok, detail = False, str(exc)
    return {"ok": ok, "detail": detail, "ms": round((time.monotonic() - started) * 1000, 1)}
