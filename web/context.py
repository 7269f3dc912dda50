"""What every part of the web app shares: the URL prefixes, the per-app context and error responses."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, jsonify, request
from markupsafe import escape

from rollback.settings import Settings

from .config import WebConfig
from .shared import SharedStore

ADMIN_PREFIX = "/admin"
API_PREFIX = "/admin/rollback/api"
CONTEXT_KEY = "rollback_web"


@dataclass(frozen=True)
class WebContext:
    """Everything a request handler needs, loaded once per app."""

    settings: Settings
    config: WebConfig
    store: SharedStore


def web_context() -> WebContext:
    return current_app.extensions[CONTEXT_KEY]


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def error_response(status: int, message: str, headers: dict | None = None):
    """JSON for the API (and any client asking for JSON), a short text page for the console."""
    wants_json = under(request.path, API_PREFIX) or request.accept_mimetypes.best == "application/json"
    body = jsonify(error=message, status=status) if wants_json else _error_page(status, message)
    return body, status, headers or {}


def _error_page(status: int, message: str) -> str:
    return (f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>"
            f'<p><a href="/admin/rollback/">Back to the rollback console</a></p>')
