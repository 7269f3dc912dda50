"""What the progress page, the history and the API status URL show about restores.

The journal is the truth (which steps ran, how they ended, durations); the Celery task state adds
the live detail of the running step (PROGRESS meta: done, total, message) and reports a task that
died before it could write the journal.
"""

from __future__ import annotations

from rollback.ids import validate_txn_id
from rollback.journal import (FINAL_STATES, RESTORE_STEPS, Journal, StepState, TxnStatus, is_success, step_summary,
                              total_duration)
from rollback.settings import Settings

from .errors import TxnNotFound
from .jobs import task_state


def restore_status(settings: Settings, txn: str) -> dict:
    """The steps of `txn` with their states, live progress and an overall percentage."""
    journal = Journal(settings.backup_dir)
    if not journal.path(validate_txn_id(txn)).is_file():
        raise TxnNotFound(f"no restore transaction {txn}")
    doc = journal.load(txn)
    steps = [_with_live_state(settings, doc, step) for step in step_summary(doc)]
    status, error = doc["status"], doc.get("error")
    if status not in FINAL_STATES:
        worker_error = next((s["task_error"] for s in steps if s.get("task_error")), None)
        if worker_error:
            status, error = TxnStatus.FAILED, worker_error
    return {
        "txn": doc["txn"],
        "status": status,
        "snapshot_id": doc.get("snapshot_id"),
        "reason": doc.get("reason"),
        "requested_by": doc.get("requested_by"),
        "auto": bool(doc.get("auto")),
        "created_at": doc.get("created_at"),
        "finished_at": doc.get("finished_at"),
        "current_step": doc.get("current_step"),
        "error": error,
        "duration_sec": total_duration(doc),
        "percent": 100 if is_success(status) else _percent(steps),
        "final": status in FINAL_STATES,
        "success": is_success(status),
        "warnings": list(doc["warnings"]),  # status succeeded_with_warnings: show them, in yellow
        "notes": list(doc["notes"]),
        "steps": steps,
    }


def _with_live_state(settings: Settings, doc: dict, step: dict) -> dict:
    task_id = (doc.get("task_ids") or {}).get(step["step"])
    step = dict(step, done=None, total=None, message=None, task_state=None)
    if not task_id or doc["status"] in FINAL_STATES or step["status"] == StepState.OK:
        return step  # the journal already says everything
    live = task_state(settings, task_id)
    step["task_state"] = live["state"]
    meta = live.get("meta") or {}
    if live["state"] == "PROGRESS" and meta.get("step") == step["step"]:
        step.update(done=meta.get("done"), total=meta.get("total"), message=meta.get("message"))
    if live["state"] == "FAILURE" and step["status"] != StepState.FAILED:
        step["task_error"] = f"step {step['step']}: {live['error']}"
    return step


def _percent(steps: list[dict]) -> int:
    finished = 0.0
    for step in steps:
        if step["status"] == StepState.OK:
            finished += 1
        elif step["status"] == StepState.RUNNING and step.get("total"):
            finished += min(1.0, (step["done"] or 0) / step["total"])
    return int(finished * 100 / len(RESTORE_STEPS))


def history(settings: Settings) -> list[dict]:
    """Past and current restores, newest first, from the journal."""
    rows = []
    for doc in reversed(Journal(settings.backup_dir).all()):
        rows.append({
            "txn": doc["txn"],
            "created_at": doc.get("created_at"),
            "snapshot_id": doc.get("snapshot_id"),
            "reason": doc.get("reason"),
            "requested_by": doc.get("requested_by"),
            "auto": bool(doc.get("auto")),
            "status": doc.get("status"),
            "error": doc.get("error"),
            "warnings": list(doc["warnings"]),
            "duration_sec": total_duration(doc),
        })
    return rows
