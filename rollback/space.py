"""BACKUP_DIR's free space against what the next snapshot needs (the last one's size × 2, as the
runbook sizes it), for `check`, the console and beat's alert."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from . import logbook
from .errors import RollbackError
from .fsutil import atomic_write_bytes
from .ids import utc_now_iso
from .manifest import Manifest
from .notify import send_alert
from .settings import Settings

ALERT_FILE = ".space-alert.json"
REALERT_SEC = 24 * 3600


def backup_space(settings: Settings) -> dict:
    """{"path", "free", "needed" (None before the first snapshot), "low"}."""
    probe = settings.backup_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    try:
        entries = Manifest.for_settings(settings).entries()
    except RollbackError:
        entries = []
    needed = 2 * sum(a["size"] for a in entries[-1]["artifacts"].values()) if entries else None
    return {"path": str(settings.backup_dir), "free": free, "needed": needed,
            "low": needed is not None and free < needed}


def alert_if_low(settings: Settings) -> dict:
    """Alert ROLLBACK_NOTIFY_WEBHOOK_URL when space is low: once, then again every day while it stays low."""
    report = backup_space(settings)
    marker = settings.backup_dir / ALERT_FILE
    if not report["low"]:
        marker.unlink(missing_ok=True)
        return dict(report, alerted=False)
    last = _last_alert(marker)
    if last is not None and age_sec(last) < REALERT_SEC:
        return dict(report, alerted=False)
    text = (f"rollback: BACKUP_DIR {report['path']} has {report['free'] >> 20} MiB free; the next snapshot needs "
            f"about {report['needed'] >> 20} MiB (twice the last one). Free space, lower BACKUP_RETENTION, or rely "
            f"on the off-site copies (BACKUP_REMOTE_URL).")
    sent = send_alert(settings, text)
    logbook.append(settings.rollback_log, logbook.format_event(
        "space low", free=report["free"], needed=report["needed"], alerted="yes" if sent else "no"))
    if settings.backup_dir.is_dir():
        atomic_write_bytes(marker, json.dumps({"at": utc_now_iso(), "free": report["free"]}).encode())
    return dict(report, alerted=sent)


def _last_alert(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_bytes()).get("at")
    except (OSError, ValueError, AttributeError):
        return None


def age_sec(iso: str | None) -> float:
    """Seconds since an ISO-8601 UTC time (as utc_now_iso writes it); infinite when unreadable."""
    try:
        then = datetime.fromisoformat((iso or "").replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (datetime.now(timezone.utc) - then).total_seconds()
