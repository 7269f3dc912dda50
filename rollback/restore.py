"""Restore transactions: admission, the preflight, one step at a time, and reconciliation.

A restore is `preflight → db → data → code → readyz`. Each step runs through `run_step`, which
holds the service flock, checks the journal (skip what is done, never run a step whose
predecessor is unfinished, ignore superseded deliveries), runs the step and records the outcome.
The same function runs inside a Celery task, in `--local` mode and in tests.
"""

from __future__ import annotations

from typing import Callable

from . import logbook
from .errors import LockHeld, PreflightFailed, RollbackError, StepFailed, StepInterrupted
from .ids import new_txn_id, validate_txn_id
from .journal import FINAL_STATES, RESTORE_STEPS, Journal, is_success, step_summary, success_status
from .lock import ServiceLock, describe_holder
from .manifest import Manifest
from .settings import Settings
from .restore_steps import STEP_FUNCTIONS
from .steps.context import StepContext

MAX_ATTEMPTS = 3
STEP_LOCK_WAIT_SEC = 30.0
ADMISSION_WAIT_SEC = 5.0  # rides over prune/cleanup/standby publishing; an admitted restore still refuses

StepProgress = Callable[[str, int, int, str], None]


def _quiet(step: str, done: int, total: int, message: str) -> None:
    return None


# -- admission --------------------------------------------------------------------------------
def begin_restore(settings: Settings, snapshot_ref: str, reason: str, auto: bool = False,
                  requested_by: str = "cli") -> dict:
    """Validate the request, claim the service for a new txn and create its journal."""
    reason = (reason or "").strip()
    if not reason:
        raise PreflightFailed("a reason is required (e.g. --reason readyz_fail)")
    entry = Manifest(settings.backup_dir).resolve(snapshot_ref)
    lock, journal = ServiceLock(settings.backup_dir), Journal(settings.backup_dir)
    txn = new_txn_id()
    try:
        with lock.held({"kind": "restore", "txn": txn, "step": "admission"}, wait_sec=ADMISSION_WAIT_SEC):
            active = lock.active()
            if active:
                raise LockHeld(f"refused: {describe_holder(active)}", active)
            doc = journal.create(txn, snapshot_id=entry["id"], reason=reason, auto=bool(auto),
                                 requested_by=requested_by)
            lock.claim({"kind": "restore", "txn": txn, "snapshot_id": entry["id"]})
    except LockHeld as exc:
        logbook.append(settings.rollback_log, logbook.format_event(
            "ROLLBACK", id=txn, step="restore", status="refused", reason=reason, error=str(exc)))
        raise
    logbook.rollback_event(settings.rollback_log, txn, "restore", "queued", snapshot=entry["id"],
                           reason=reason, auto=str(bool(auto)).lower(), by=requested_by)
    return doc


def run_step(settings: Settings, txn: str, step: str, attempt: int | None = None,
             progress: StepProgress = _quiet) -> dict:
    """Run one step of `txn` idempotently; returns {"step", "status", "detail"}."""
    validate_txn_id(txn)
    if step not in STEP_FUNCTIONS:
        raise RollbackError(f"unknown step {step}")
    lock, journal = ServiceLock(settings.backup_dir), Journal(settings.backup_dir)
    with lock.held({"kind": "restore", "txn": txn, "step": step}, wait_sec=STEP_LOCK_WAIT_SEC):
        doc = journal.load(txn)
        skip = _skip_reason(doc, step, attempt, lock.active())
        if skip:
            return {"step": step, "status": "skipped", "detail": skip}
        entry = Manifest(settings.backup_dir).get(doc["snapshot_id"])
        ctx = StepContext(settings, txn, step, entry, journal,
                          progress=lambda d, t, m: progress(step, d, t, m))
        journal.step_started(txn, step)
        logbook.rollback_event(settings.rollback_log, txn, step, "start", snapshot=entry["id"])
        try:
            detail = STEP_FUNCTIONS[step](ctx)
        except BaseException as exc:  # record every failure, even an interrupt, then re-raise
            message = _failure_message(step, exc)
            if isinstance(exc, StepInterrupted):  # keep the service claimed: the state is half-done
                journal.step_finished(txn, step, "interrupted", error=message)
                journal.update(txn, error=message)
                logbook.rollback_event(settings.rollback_log, txn, step, "interrupted", error=message)
                raise
            if isinstance(exc, Exception):
                journal.step_finished(txn, step, "failed", error=message)
                journal.finish(txn, "failed", error=message)
                lock.release(txn)
                logbook.rollback_event(settings.rollback_log, txn, step, "failed", error=message)
                logbook.rollback_event(settings.rollback_log, txn, "restore", "failed", failed_step=step)
                raise StepFailed(step, message.removeprefix(f"step {step} failed: ")) from None
            raise
        journal.step_finished(txn, step, "ok", detail=detail)
        logbook.rollback_event(settings.rollback_log, txn, step, "ok", detail=detail)
        if step == RESTORE_STEPS[-1]:
            doc = journal.finish(txn, success_status(journal.load(txn)))
            lock.release(txn)
            total = sum(s.get("duration_sec") or 0 for s in doc["steps"].values())
            logbook.rollback_event(settings.rollback_log, txn, "restore", "ok", duration_sec=f"{total:.1f}",
                                   outcome=doc["status"], warnings=len(doc.get("warnings") or []) or None)
    return {"step": step, "status": "ok", "detail": detail}


def _skip_reason(doc: dict, step: str, attempt: int | None, active: dict | None) -> str | None:
    if doc["status"] in FINAL_STATES:
        return f"transaction already {doc['status']}"
    if attempt is not None and attempt != doc.get("attempt", 1):
        return f"superseded delivery (attempt {attempt}, journal is at {doc.get('attempt')})"
    if not active or active.get("txn") != doc["txn"]:
        raise LockHeld(f"refused: transaction {doc['txn']} does not own the service "
                       f"({describe_holder(active or {})})", active or {})
    if doc["steps"][step]["status"] == "ok":
        return "already done"
    for earlier in RESTORE_STEPS[: RESTORE_STEPS.index(step)]:
        if doc["steps"][earlier]["status"] != "ok":
            raise RollbackError(f"step {step} refused: the earlier step {earlier} is not finished")
    return None


def _failure_message(step: str, exc: BaseException) -> str:
    if isinstance(exc, RollbackError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _finish_complete(settings: Settings, lock: ServiceLock, journal: Journal, doc: dict) -> dict:
    """Close a txn whose every step is ok but whose final write never happened (its process died
    between them). Call with the service flock held."""
    doc = journal.finish(doc["txn"], success_status(doc))
    lock.release(doc["txn"])
    logbook.rollback_event(settings.rollback_log, doc["txn"], "restore", "ok",
                           note="every step was already done; finished after an interruption")
    return doc


def _all_steps_ok(doc: dict) -> bool:
    return all(doc["steps"][s]["status"] == "ok" for s in RESTORE_STEPS)


def run_restore_local(settings: Settings, snapshot_ref: str, reason: str, auto: bool = False,
                      requested_by: str = "cli --local", progress: StepProgress = _quiet) -> dict:
    """Admit and run a whole restore in this process (no broker); returns the journal."""
    doc = begin_restore(settings, snapshot_ref, reason, auto, requested_by)
    return run_remaining(settings, doc["txn"], progress)


def run_remaining(settings: Settings, txn: str, progress: StepProgress = _quiet) -> dict:
    journal = Journal(settings.backup_dir)
    attempt = journal.load(txn).get("attempt", 1)
    for step in RESTORE_STEPS:
        run_step(settings, txn, step, attempt, progress)
    doc = journal.load(txn)
    if doc["status"] not in FINAL_STATES and _all_steps_ok(doc):
        lock = ServiceLock(settings.backup_dir)
        with lock.held({"kind": "restore", "txn": txn, "step": "finish"}, wait_sec=STEP_LOCK_WAIT_SEC):
            doc = journal.load(txn)
            if doc["status"] not in FINAL_STATES and _all_steps_ok(doc):
                doc = _finish_complete(settings, lock, journal, doc)
    return doc


def restore_summary(doc: dict) -> dict:
    """The outcome as adapters show it: `status` is succeeded, succeeded_with_warnings or failed (or a
    running state); `warnings` say what was degraded, `notes` are informational lines."""
    return {"txn": doc["txn"], "status": doc["status"], "snapshot_id": doc.get("snapshot_id"),
            "reason": doc.get("reason"), "error": doc.get("error"), "steps": step_summary(doc),
            "warnings": list(doc.get("warnings") or []), "notes": list(doc.get("notes") or [])}


# -- reconciliation ---------------------------------------------------------------------------
def reconcile(settings: Settings) -> dict | None:
    """At worker start: find a restore left unfinished by a dead process.

    Returns {"action": "resume", "txn", "attempt", "steps"} when it should be resumed (the attempt
    counter is bumped, so deliveries of the old canvas become no-ops), {"action": "failed", ...}
    when it has been tried too often, or None when there is nothing to do or a step is running.
    """
    lock, journal = ServiceLock(settings.backup_dir), Journal(settings.backup_dir)
    if not settings.backup_dir.exists():
        return None
    try:
        with lock.held({"kind": "reconcile"}):
            active = lock.active()
            if not active or not active.get("txn"):
                return None
            txn = active["txn"]
            try:
                doc = journal.load(txn)
            except RollbackError:
                lock.release(txn)
                return {"action": "released", "txn": txn}
            if doc["status"] in FINAL_STATES:
                lock.release(txn)
                return {"action": "released", "txn": txn}
            remaining = [s for s in RESTORE_STEPS if doc["steps"][s]["status"] != "ok"]
            if not remaining:
                _finish_complete(settings, lock, journal, doc)
                return {"action": "finished", "txn": txn}
            attempt = doc.get("attempt", 1) + 1
            if attempt > MAX_ATTEMPTS:
                message = f"interrupted {attempt - 1} times; stopped (resume by hand: python -m manage.rollback resume {txn})"
                journal.finish(txn, "failed", error=message)
                lock.release(txn)
                logbook.rollback_event(settings.rollback_log, txn, "restore", "failed", error=message)
                return {"action": "failed", "txn": txn, "error": message}
            for step in remaining:
                if doc["steps"][step]["status"] == "running":
                    journal.step_finished(txn, step, "interrupted", error="worker died during the step")
            journal.update(txn, attempt=attempt)
            logbook.rollback_event(settings.rollback_log, txn, "restore", "resume", attempt=attempt,
                                   steps=",".join(remaining))
            return {"action": "resume", "txn": txn, "attempt": attempt, "steps": remaining}
    except LockHeld:
        return None  # a step is running right now: its process is alive


def resume(settings: Settings, txn: str) -> dict:
    """Operator-driven resume of a failed or interrupted txn: reclaim the service, bump the attempt."""
    lock, journal = ServiceLock(settings.backup_dir), Journal(settings.backup_dir)
    with lock.held({"kind": "restore", "txn": txn, "step": "resume"}):
        doc = journal.load(txn)
        if is_success(doc["status"]):
            raise PreflightFailed(f"transaction {txn} already {doc['status']}")
        active = lock.active()
        if active and active.get("txn") != txn:
            raise LockHeld(f"refused: {describe_holder(active)}", active)
        if _all_steps_ok(doc):
            lock.claim({"kind": "restore", "txn": txn, "snapshot_id": doc["snapshot_id"]})
            return _finish_complete(settings, lock, journal, doc)
        for step in RESTORE_STEPS:
            if doc["steps"][step]["status"] not in ("ok", "pending"):
                doc["steps"][step]["status"] = "pending"
        doc = journal.update(txn, status="running", error=None, attempt=doc.get("attempt", 1) + 1,
                             steps=doc["steps"])
        lock.claim({"kind": "restore", "txn": txn, "snapshot_id": doc["snapshot_id"]})
    logbook.rollback_event(settings.rollback_log, txn, "restore", "resume", attempt=doc["attempt"], by="operator")
    return doc


def abandon(settings: Settings, txn: str, error: str) -> None:
    """Mark an admitted txn failed before any step ran (e.g. the broker refused the canvas)."""
    lock, journal = ServiceLock(settings.backup_dir), Journal(settings.backup_dir)
    with lock.held({"kind": "restore", "txn": txn, "step": "abandon"}, wait_sec=STEP_LOCK_WAIT_SEC):
        journal.finish(txn, "failed", error=error)
        lock.release(txn)
    logbook.rollback_event(settings.rollback_log, txn, "restore", "failed", error=error)
