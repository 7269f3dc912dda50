"""The app's processes: their restart on the restored code (APP_RESTART_COMMAND).

The command runs through /bin/sh -c in APP_REPO_DIR, like every command of the app
(rollback.app_command); its output is appended to LOG_DIR/app-restart.log, a visible log where an
app it starts in the background keeps writing.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..app_command import AppCommandResult, app_env, run_app_command
from ..ids import utc_now_iso
from ..logbook import mask_secrets
from ..settings import Settings

RESTART_LOG = "app-restart.log"


def restart_app(settings: Settings, txn: str | None = None) -> AppCommandResult:
    """Run APP_RESTART_COMMAND within APP_RESTART_TIMEOUT_SEC; the result holds its output's tail."""
    command = settings.app_restart_command
    if not command:
        raise ValueError("APP_RESTART_COMMAND is not set")
    log_path = settings.log_dir / RESTART_LOG
    try:
        _append_header(log_path, txn)
        result = run_app_command(["/bin/sh", "-c", command], cwd=settings.app_repo_dir, env=app_env(settings),
                                 timeout=settings.app_restart_timeout_sec, output_path=log_path)
    except OSError as exc:  # LOG_DIR not writable: the command never ran
        now = utc_now_iso()
        result = AppCommandResult(command, None, 0.0, "", start_error=f"{log_path}: {exc.strerror or exc}",
                                  started_at=now, finished_at=now)
    result.command = mask_secrets(command)
    return result


def _append_header(log_path: Path, txn: str | None) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"--- {utc_now_iso()} APP_RESTART_COMMAND (restore {txn or '-'}) ---\n".encode())
    finally:
        os.close(fd)
