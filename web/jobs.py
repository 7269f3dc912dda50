"""Starting work on the Celery worker for the console and the API (one code path for both)."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import redis
from celery import Celery
from kombu.exceptions import KombuError

import tasks
from rollback.errors import LockHeld
from rollback.lock import ServiceLock, describe_holder
from rollback.settings import Settings
from tasks.maintenance import verify
from tasks.restore import enqueue_restore
from tasks.snapshot import take_snapshot

from .errors import BrokerUnavailable
from .shared import SharedStore

TASK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PENDING_SNAPSHOT_KEY = "snapshot-task"
PENDING_SNAPSHOT_TTL_SEC = 3600
UNFINISHED_STATES = ("PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY")


def bind_celery(settings: Settings) -> Celery:
    """Our Celery app (tasks.app), pointed at the broker and result backend of `settings`."""
    conf = tasks.app.conf
    if (conf.broker_url, conf.result_backend) != (settings.celery_broker_url, settings.celery_result_backend):
        conf.update(broker_url=settings.celery_broker_url, result_backend=settings.celery_result_backend)
    return tasks.app


def active_restore(settings: Settings) -> dict | None:
    """The restore that owns the service right now ({"txn", ...}), if any."""
    active = ServiceLock(settings.backup_dir).active()
    return active if active and active.get("txn") else None


@contextlib.contextmanager
def _sending() -> Iterator[None]:
    """Turn the broker's connection errors into one operator message (HTTP 503)."""
    try:
        yield
    except (KombuError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"could not reach the Celery broker: {exc}") from None


def start_restore(settings: Settings, snapshot_ref: str, reason: str, requested_by: str) -> tuple[dict, str]:
    """Admit a restore and send its canvas; returns (journal doc, id of the canvas's last task)."""
    with _sending():  # when sending fails, the core has already abandoned the txn
        doc, result = enqueue_restore(snapshot_ref, reason, auto=False, requested_by=requested_by, settings=settings)
    return doc, result.id


def start_snapshot(settings: Settings, store: SharedStore, notes: str) -> str:
    """Send a snapshot task unless a restore or snapshot is under way; returns the task id."""
    refuse_if_busy(settings, store)
    with _sending():
        result = take_snapshot.apply_async(kwargs={"notes": notes})
    store.remember(PENDING_SNAPSHOT_KEY, result.id, PENDING_SNAPSHOT_TTL_SEC)
    return result.id


def start_verify(snapshot_id: str) -> str:
    with _sending():
        return verify.apply_async(args=(snapshot_id,)).id


def refuse_if_busy(settings: Settings, store: SharedStore) -> None:
    """Raise LockHeld when a restore owns the service, a snapshot task is queued or running,
    or any process holds the service lock right now."""
    active = active_restore(settings)
    if active:
        raise LockHeld(f"refused: {describe_holder(active)}", active)
    pending = store.recall(PENDING_SNAPSHOT_KEY)
    if pending and task_state(settings, pending)["state"] in UNFINISHED_STATES:
        raise LockHeld(f"refused: snapshot task {pending} in progress", {"kind": "snapshot", "task_id": pending})
    # A momentary, non-blocking probe of the flock (the core's own API) catches CLI snapshots too.
    with ServiceLock(settings.backup_dir).held({"kind": "web probe"}):
        pass


def task_state(settings: Settings, task_id: str) -> dict:
    """A Celery task's state and its progress meta, result or error, as plain JSON."""
    result = bind_celery(settings).AsyncResult(task_id)
    try:
        state, info = result.state, result.info
    except (redis.RedisError, KombuError, OSError) as exc:  # report it: the journal stays the truth
        return {"task_id": task_id, "state": "UNKNOWN", "error": f"result backend unreachable: {exc}"}
    out: dict = {"task_id": task_id, "state": state}
    if state == "FAILURE":
        out["error"] = str(info) or type(info).__name__
    elif isinstance(info, dict):
        out["result" if state == "SUCCESS" else "meta"] = info
    return out
