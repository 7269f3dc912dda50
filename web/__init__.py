"""Flask app factory: /healthz, /readyz, the rollback console (Flask-Admin) and the API under /admin/rollback."""

from __future__ import annotations

import os
from datetime import timedelta

from flask import Flask, jsonify, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from rollback.errors import RollbackError
from rollback.settings import Settings

from .access import address_allowed, audit, client_address
from .api import api
from .config import WebConfig
from .console import init_console
from . import discarded as _discarded  # noqa: F401  (adds /plan and /discarded to the API blueprint)
from .context import ADMIN_PREFIX, API_PREFIX, CONTEXT_KEY, WebContext, error_response, under, web_context
from .errors import http_status_for
from .jobs import bind_celery
from .metrics import register_metrics
from .readyz import readiness
from .shared import SharedStore


def create_app(settings: Settings | None = None, config: WebConfig | None = None) -> Flask:
    """The app; settings and web config come from the environment unless given (tests pass both).
    An invalid variable raises ConfigError, one line naming it, before anything is served."""
    app = Flask(__name__)
    settings = settings or Settings.from_env()
    config = config or WebConfig.from_env(os.environ)
    ctx = WebContext(settings, config, SharedStore(settings.celery_broker_url, str(settings.backup_dir)))
    app.extensions[CONTEXT_KEY] = ctx
    app.config["ROLLBACK_SETTINGS"] = settings
    _configure(app, config)
    bind_celery(settings)
    _register_health(app, ctx)
    register_metrics(app, ctx)
    _register_guards(app)
    _register_errors(app)

    csrf = CSRFProtect(app)
    csrf.exempt(api)  # Bearer-token clients send no cookie, so there is nothing to forge
    app.register_blueprint(api)
    init_console(app, ctx)
    return app


def _configure(app: Flask, config: WebConfig) -> None:
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_NAME="rollback_session",
        SESSION_COOKIE_HTTPONLY=True,
        # Browsers treat http://127.0.0.1 and http://localhost as secure, so the local demo keeps working.
        SESSION_COOKIE_SECURE=config.cookie_secure,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    if config.trusted_proxy_hops:
        # Only the given number of proxies may set X-Forwarded-*; anything further left is ignored.
        # Proto and host too: behind a TLS proxy, CSRF's referrer check compares against them.
        hops = config.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)


def _register_health(app: Flask, ctx: WebContext) -> None:
    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    @app.get("/readyz")
    def readyz():
        ok, checks = readiness(ctx.settings, ctx.config)
        return jsonify(ok=ok, checks=checks), (200 if ok else 503)


def _register_guards(app: Flask) -> None:
    @app.before_request
    def allowlist():
        if not under(request.path, ADMIN_PREFIX):
            return None
        ctx = web_context()
        if address_allowed(ctx.config, client_address()):
            return None
        audit(ctx.settings, "access", "denied", path=request.path)
        return error_response(403, f"address {client_address()} is not allowed (ALLOW_ADMIN_ROLLBACK_IPS)")

    @app.after_request
    def hardening(response):
        if under(request.path, ADMIN_PREFIX):
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(RollbackError)
    def rollback_error(exc: RollbackError):
        return error_response(http_status_for(exc), str(exc))

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        audit(web_context().settings, "form", "refused", path=request.path, error=exc.description)
        return error_response(400, f"CSRF check failed: {exc.description} Reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if under(request.path, API_PREFIX):
            return error_response(exc.code or 500, exc.description or exc.name)
        return exc
