"""Celery adapter: `celery -A tasks worker` / `celery -A tasks beat`.

Tasks are thin: they load settings, call the core and report progress through task state.
"""

from celery import Celery

app = Celery("tasks")
app.config_from_object("celeryconfig")

from . import signals  # noqa: E402,F401  (reconcile at worker start)
from .canary import enqueue_canary  # noqa: E402,F401
from .restore import enqueue_restore, restore_latest_backup  # noqa: E402,F401

__all__ = ["app", "enqueue_canary", "enqueue_restore", "restore_latest_backup"]
