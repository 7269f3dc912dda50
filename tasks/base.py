"""Settings for tasks and a progress reporter that writes Celery task state."""

from __future__ import annotations

import logging
import threading
import time

from rollback.journal import RESTORE_STEPS
from rollback.settings import Settings

log = logging.getLogger(__name__)
RESTORE_STEP_TASKS = {f"rollback.restore.{step}" for step in RESTORE_STEPS}
# Work that follows a restore (hashing the artifacts, comparing what was replaced) waits this long, so
# that it does not take the cores while the operator's command is still receiving the outcome.
FOLLOW_UP_DELAY_SEC = 2.0
_lock = threading.Lock()
_settings: Settings | None = None


def get_settings() -> Settings:
    """Load once per process; tests and embedders may install their own with use_settings()."""
    global _settings
    with _lock:
        if _settings is None:
            settings = Settings.from_env()
            _settings = settings
        return _settings


def use_settings(settings: Settings | None) -> None:
    global _settings
    with _lock:
        _settings = settings


class StateReporter:
    """Turn core progress callbacks into PROGRESS states, at most every 0.2 s per step."""

    def __init__(self, task, txn: str | None = None, min_interval: float = 0.2):
        self.task, self.txn, self.min_interval = task, txn, min_interval
        self._last: tuple[str, float] = ("", 0.0)

    def __call__(self, step: str, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        last_step, last_time = self._last
        if step == last_step and now - last_time < self.min_interval and done < total:
            return
        self._last = (step, now)
        if self.task.request.id is None:  # called eagerly/outside a worker
            return
        meta = {"txn": self.txn, "step": step, "done": done, "total": total, "message": message}
        try:
            self.task.update_state(state="PROGRESS", meta=meta)
        except Exception as exc:  # progress is for display; a result-backend blip must not fail the step
            log.warning("progress of %s not published (%s: %s)", step, type(exc).__name__, exc)
