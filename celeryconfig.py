"""Celery settings for `celery -A tasks worker|beat`. Broker/backend URLs come from the environment."""

import os
import sys

from celery.schedules import crontab

# The validators Settings applies, so beat, the worker and the CLI agree on what is valid.
from rollback.errors import ConfigError
from rollback.settings import drill_schedule, encryption_key_from_env, env_schedule as validated_schedule

broker_url = os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
result_backend = os.environ.get("CELERY_RESULT_BACKEND") or "redis://127.0.0.1:6379/0"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# A task is acknowledged only when it finished, and redelivered if its worker died mid-way;
# the journal makes the redelivery a no-op or a resume.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True

# Longer than the longest restore, so Redis never redelivers a step that is still running.
broker_transport_options = {"visibility_timeout": 4 * 3600}
result_expires = 7 * 24 * 3600
result_extended = True

# Fail fast when Redis is down, so the CLI can say so and suggest --local.
broker_connection_timeout = 5
broker_connection_retry_on_startup = True
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
redis_socket_connect_timeout = 5
redis_socket_timeout = 30

# rollback.restore_steps: loaded at the worker's start, so that no restore's first step pays its import.
imports = ("tasks.snapshot", "tasks.restore", "tasks.maintenance", "tasks.canary", "tasks.discarded",
           "tasks.remote", "tasks.drill", "rollback.restore_steps")


def celery_schedule(text: str):
    """'hourly' | 'daily' | seconds | a 5-field crontab (minute hour day-of-month month day-of-week)."""
    if text == "hourly":
        return crontab(minute=0)
    if text == "daily":
        return crontab(minute=0, hour=0)
    fields = text.split(" ")
    if len(fields) == 5:
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    return float(text)


def _checked_environment() -> tuple[str, str | None]:
    """A malformed schedule or encryption key stops the worker and beat at start-up with one line
    naming the variable (not a traceback, and not a worker that fails every upload later)."""
    try:
        encryption_key_from_env(os.environ)
        return validated_schedule(os.environ, "BACKUP_PRUNE_SCHEDULE", "hourly"), drill_schedule(os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # exit 2, as the CLI does for bad configuration
        raise SystemExit(2) from None


_housekeeping_text, _drill_text = _checked_environment()
# `celery -A tasks beat` sends these; prune and cleanup take the service lock only briefly.
_housekeeping = celery_schedule(_housekeeping_text)
# A run that waited longer than one period is superseded by the next: no backlog after downtime.
_expires = _housekeeping if isinstance(_housekeeping, float) else 3600.0
beat_schedule = {
    "rollback-prune": {"task": "rollback.prune", "schedule": _housekeeping, "options": {"expires": _expires}},
    "rollback-cleanup": {"task": "rollback.cleanup", "schedule": _housekeeping, "options": {"expires": _expires}},
    # Off-site copies: re-send pending uploads, then BACKUP_REMOTE_RETENTION (a no-op without BACKUP_REMOTE_URL);
    # and the BACKUP_DIR free-space alert.
    "rollback-remote-sync": {"task": "rollback.remote.sync", "schedule": _housekeeping,
                             "options": {"expires": _expires}},
    "rollback-space": {"task": "rollback.space", "schedule": _housekeeping, "options": {"expires": _expires}},
}
# Restore drills (ROLLBACK_DRILL_SCHEDULE, default daily, `off` disables): every snapshot not yet drilled.
if _drill_text is not None:
    _drills = celery_schedule(_drill_text)
    beat_schedule["rollback-drill"] = {"task": "rollback.drill", "schedule": _drills,
                                       "options": {"expires": _drills if isinstance(_drills, float) else 6 * 3600.0}}
