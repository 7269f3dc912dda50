"""Alerts: a Slack-compatible JSON message (`{"text": ...}`) POSTed to ROLLBACK_NOTIFY_WEBHOOK_URL.

An alert must never break what raised it (a canary verdict, an automatic rollback): a failed
delivery is logged to rollback.log and reported as False, never raised. Webhook URLs carry their
secret in the path (Slack's do), so only the host is ever logged.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from . import logbook
from .settings import Settings

TIMEOUT_SEC = 5.0


def send_alert(settings: Settings, text: str) -> bool:
    """POST `text` to the webhook; True when it answered 2xx, False when unset or it failed."""
    url = settings.notify_webhook_url
    if not url:
        return False
    host = urlsplit(url).netloc.rsplit("@", 1)[-1]
    body = json.dumps({"text": text}).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SEC) as resp:  # noqa: S310 (operator-configured URL)
            ok, detail = 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        ok, detail = False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        ok, detail = False, f"unreachable ({getattr(exc, 'reason', exc)})"
    logbook.append(settings.rollback_log, logbook.format_event(
        "notify", status="sent" if ok else "failed", host=host, detail=detail))
    return ok
