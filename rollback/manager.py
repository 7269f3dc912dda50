"""The entry points the runbook names, for callers that run in-process (no broker)."""

from __future__ import annotations

from .restore import run_restore_local
from .settings import Settings


def restore_latest_backup(reason: str, auto: bool = False, settings: Settings | None = None,
                          requested_by: str = "manager") -> dict:
    """Restore the newest snapshot in this process; returns the finished journal."""
    settings = settings or Settings.from_env()
    return run_restore_local(settings, "latest", reason=reason, auto=auto, requested_by=requested_by)
