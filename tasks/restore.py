"""Restore canvas: chain(preflight, db, data, code, readyz), one task per step."""

from __future__ import annotations

from celery import chain
from celery.utils import uuid

from rollback import restore as core
from rollback.journal import RESTORE_STEPS, Journal
from rollback.settings import Settings

from . import app
from .base import StateReporter, get_settings


def _run(task, txn: str, step: str, attempt: int) -> dict:
    settings = get_settings()
    restore = core.RestoreTxn(settings, txn)
    result = restore.run_step(step, attempt, progress=StateReporter(task, txn))
    if step == RESTORE_STEPS[-1]:
        result["summary"] = restore.result().to_dict()
    return result


@app.task(bind=True, name="rollback.restore.preflight")
def preflight(self, txn: str, attempt: int) -> dict:
    return _run(self, txn, "preflight", attempt)


@app.task(bind=True, name="rollback.restore.db")
def restore_db(self, txn: str, attempt: int) -> dict:
    return _run(self, txn, "db", attempt)


@app.task(bind=True, name="rollback.restore.data")
def restore_data(self, txn: str, attempt: int) -> dict:
    return _run(self, txn, "data", attempt)


@app.task(bind=True, name="rollback.restore.code")
def restore_code(self, txn: str, attempt: int) -> dict:
    return _run(self, txn, "code", attempt)


@app.task(bind=True, name="rollback.restore.readyz")
def restore_readyz(self, txn: str, attempt: int) -> dict:
    return _run(self, txn, "readyz", attempt)


STEP_TASKS = {"preflight": preflight, "db": restore_db, "data": restore_data, "code": restore_code,
              "readyz": restore_readyz}


def send_canvas(settings: Settings, txn: str, attempt: int, steps=RESTORE_STEPS):
    """Send chain(steps) with immutable signatures (txn, attempt), after recording which task id runs
    which step in the journal: recorded first, so no step's own journal write can race with it."""
    steps = list(steps)
    ids = [uuid() for _ in steps]
    record_task_ids(settings, txn, dict(zip(steps, ids)))
    canvas = chain(*(STEP_TASKS[s].si(txn, attempt).set(task_id=i) for s, i in zip(steps, ids)))
    return canvas.apply_async()


def step_results(result) -> list:
    """The AsyncResults of a chain, first step first."""
    results = []
    node = result
    while node is not None:
        results.append(node)
        node = node.parent
    return list(reversed(results))


def enqueue_restore(snapshot_ref: str, reason: str, auto: bool = False, requested_by: str = "api",
                    settings: Settings | None = None):
    """Admit a restore and send its canvas; returns (journal doc, AsyncResult of the last step)."""
    settings = settings or get_settings()
    doc = core.begin_restore(settings, snapshot_ref, reason, auto, requested_by)
    try:
        result = send_canvas(settings, doc["txn"], doc["attempt"])
    except Exception as exc:  # broker unreachable: do not leave the service claimed
        core.abandon(settings, doc["txn"], f"could not enqueue the restore: {exc}")
        raise
    return doc, result


def record_task_ids(settings: Settings, txn: str, ids: dict) -> None:
    """Remember which Celery task runs which step, so any client can follow the txn."""
    journal = Journal(settings.backup_dir)
    merged = dict(journal.load(txn).get("task_ids") or {})
    merged.update(ids)
    journal.update(txn, task_ids=merged)


def restore_latest_backup(reason: str, auto: bool = False, requested_by: str = "canary",
                          settings: Settings | None = None):
    """The runbook's entry point: restore the newest snapshot through the worker."""
    return enqueue_restore("latest", reason=reason, auto=auto, requested_by=requested_by, settings=settings)
