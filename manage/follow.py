"""Following work sent to the Celery worker from the CLI: is a worker there, the tasks' progress, the
journal when the result backend is gone. Celery is imported only inside the functions that talk to it."""

from __future__ import annotations

import time
from typing import Callable

from rollback import logbook
from rollback.errors import RollbackError
from rollback.journal import FINAL_STATES, RESTORE_STEPS, Journal, StepState
from rollback.settings import Settings

POLL_FIRST_SEC = 0.02
POLL_MAX_SEC = 0.25

Out = Callable[..., None]  # the CLI's Printer: out(step, done, total, message) and out.line(text)


def follow_canary(result, out: Out, poll: float = 0.1) -> dict:
    """Follow the canary task through its re-runs (RETRY states carry why it waits) to its verdict."""
    from tasks import app

    while True:
        while not result.ready():
            if result.state == "RETRY":
                out("canary", 0, 0, str(result.info))
            time.sleep(poll)
        if result.failed():
            exc = result.result
            raise exc if isinstance(exc, RollbackError) else RollbackError(f"canary failed: {exc}")
        verdict = result.get()
        if verdict["status"] != "duplicate":
            return verdict
        out.line(f"  a canary of deploy {verdict['deploy_id']} is already running; following it")
        result = app.AsyncResult(verdict["watched_by"])


JOURNAL_STALL_SEC = 600.0


def follow_journal(settings: Settings, txn: str, out: Out, poll: float = 0.5) -> None:
    """Wait until the journal of `txn` is final, printing each step as it ends."""
    journal, shown, last_change, last_seen = Journal(settings.backup_dir), {}, time.monotonic(), None
    while True:
        doc = journal.load(txn)
        if doc.get("updated_at") != last_seen:
            last_seen, last_change = doc.get("updated_at"), time.monotonic()
        for step in RESTORE_STEPS:
            status = doc["steps"][step]["status"]
            if status != StepState.PENDING and shown.get(step) != status:
                shown[step] = status
                out.line(f"  [{step:<9}] {status}")
        if doc["status"] in FINAL_STATES:
            return
        if time.monotonic() - last_change > JOURNAL_STALL_SEC:
            out.line(f"  no progress recorded for {JOURNAL_STALL_SEC:.0f} s; is a worker running? "
                     f"(python -m manage.rollback status {txn})")
            return
        time.sleep(poll)


WORKER_PING_TIMEOUT_SEC = 2.0


def poll_intervals():
    """20 ms, doubling up to 0.25 s: a step that ends in a few hundredths of a second is seen at once,
    a long one costs the result backend four reads a second."""
    interval = POLL_FIRST_SEC
    while True:
        yield interval
        interval = min(interval * 2, POLL_MAX_SEC)


# Celery's READY_STATES, spelled out: `rollback --help` and the local commands run where only the core is
# installed (the app's virtualenv), so this module imports Celery only where a command talks to a worker.
TASK_DONE_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def follow(named_results: list, out: Out) -> list:
    """Follow Celery tasks in order, printing progress; return their results or raise on failure."""
    values = []
    for name, result in named_results:
        intervals, last_info = poll_intervals(), None
        while True:
            # One backend read gives state and meta together; .state then .info races with the step ending.
            meta = result.backend.get_task_meta(result.id)
            if meta["status"] in TASK_DONE_STATES:
                break
            info = meta["result"] if meta["status"] == "PROGRESS" else None
            if isinstance(info, dict) and info != last_info:
                last_info, intervals = info, poll_intervals()  # something moves: look again soon
                out(info.get("step", name), info.get("done", 0), info.get("total", 0), info.get("message", ""))
            time.sleep(next(intervals))
        if result.failed():
            exc = result.result
            out.line(f"  [{name:<9}] FAILED {exc}")
            raise RollbackError(str(exc)) if not isinstance(exc, RollbackError) else exc
        value = result.get(propagate=True)
        if isinstance(value, dict) and value.get("status") in ("ok", "skipped"):
            out.line(f"  [{name:<9}] {value['status']}: {value.get('detail', '')}")
        values.append(value)
    return values


def require_worker() -> list:
    """Return as soon as one worker answers (`limit=1`): the timeout is waited only when none does."""
    from tasks import app

    try:
        replies = app.control.ping(timeout=WORKER_PING_TIMEOUT_SEC, limit=1)
    except Exception as exc:  # kombu raises several types for a dead broker
        url = logbook.mask_secrets(app.conf.broker_url)
        raise RollbackError(f"cannot reach the broker at {url} ({exc}); run with --local to work "
                            f"in this process") from None
    if not replies:
        raise RollbackError("no Celery worker answered; start one (`celery -A tasks worker`) or use --local")
    return replies
