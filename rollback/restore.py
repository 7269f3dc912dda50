"""Restore transactions: admission, one step at a time, and what happens after a crash.

A restore is `preflight → db → data → code → readyz`. Every restore runs through a `RestoreTxn`
(settings, txn id, the service lock, the journal), which owns all of its transitions: admitting it,
running a step (skip what is done, never run a step whose predecessor is unfinished, ignore
superseded deliveries), closing it (`close`: journal, lock, final log line), resuming and
reconciling it. What to do in each situation is decided by pure functions of the journal document
and the active-lock record (`decide_*`), so those rules are testable without a database.
The same code runs inside a Celery task, in `--local` mode and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ContextManager, Mapping

from . import logbook
from .errors import LockHeld, PreflightFailed, RollbackError, StepFailed, StepInterrupted
from .ids import new_txn_id, validate_txn_id
from .journal import (FINAL_STATES, RESTORE_STEPS, Journal, RestoreResult, StepState, TxnStatus, all_steps_ok,
                      is_success, step_state, steps_left, success_status, total_duration)
from .lock import ServiceLock, describe_holder
from .manifest import Manifest
from .progress import Progress, Sink, as_progress
from .settings import Settings

MAX_ATTEMPTS = 3
STEP_LOCK_WAIT_SEC = 30.0
ADMISSION_WAIT_SEC = 5.0  # rides over prune/cleanup/standby publishing; an admitted restore still refuses
FINISHED_LATE = "every step was already done; finished after an interruption"


# -- decisions (pure: the journal document and the active-lock record in, a Decision out) ------
class Action(str, Enum):
    RUN = "run"  # run the step
    SKIP = "skip"  # nothing to do for this delivery
    FINISH = "finish"  # every step is ok: close the transaction as a success
    REFUSE = "refuse"  # raise `error`
    RESUME = "resume"  # run `steps` again under `attempt`, after applying `step_changes`
    GIVE_UP = "give_up"  # close the transaction as failed
    RELEASE = "release"  # the owner record names a finished or unreadable transaction: drop it
    NOTHING = "nothing"  # no transaction owns the service


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str = ""
    error: RollbackError | None = None
    attempt: int | None = None
    steps: tuple[str, ...] = ()
    step_changes: Mapping[str, StepState] = field(default_factory=dict)


def decide_admission(active: dict | None) -> Decision:
    if active:
        return Decision(Action.REFUSE, error=LockHeld(f"refused: {describe_holder(active)}", active))
    return Decision(Action.RUN)


def decide_step(doc: dict, step: str, attempt: int | None, active: dict | None) -> Decision:
    """What a delivery of `step` (from canvas `attempt`, or None for any) does with this journal."""
    if doc["status"] in FINAL_STATES:
        return Decision(Action.SKIP, f"transaction already {doc['status']}")
    if attempt is not None and attempt != doc["attempt"]:
        return Decision(Action.SKIP, f"superseded delivery (attempt {attempt}, journal is at {doc['attempt']})")
    if not active or active.get("txn") != doc["txn"]:
        return Decision(Action.REFUSE, error=LockHeld(f"refused: transaction {doc['txn']} does not own the service "
                                                      f"({describe_holder(active or {})})", active or {}))
    if step_state(doc, step) is StepState.OK:
        return Decision(Action.FINISH, FINISHED_LATE) if all_steps_ok(doc) else Decision(Action.SKIP, "already done")
    for earlier in RESTORE_STEPS[: RESTORE_STEPS.index(step)]:
        if step_state(doc, earlier) is not StepState.OK:
            return Decision(Action.REFUSE, error=RollbackError(
                f"step {step} refused: the earlier step {earlier} is not finished"))
    return Decision(Action.RUN)


def decide_resume(doc: dict, active: dict | None) -> Decision:
    """The operator's resume of a failed or interrupted transaction."""
    if is_success(doc["status"]):
        return Decision(Action.REFUSE, error=PreflightFailed(f"transaction {doc['txn']} already {doc['status']}"))
    if active and active.get("txn") != doc["txn"]:
        return Decision(Action.REFUSE, error=LockHeld(f"refused: {describe_holder(active)}", active))
    if all_steps_ok(doc):
        return Decision(Action.FINISH, FINISHED_LATE)
    unfinished = {s: StepState.PENDING for s in RESTORE_STEPS
                  if step_state(doc, s) not in (StepState.OK, StepState.PENDING)}
    return Decision(Action.RESUME, attempt=doc["attempt"] + 1, steps=tuple(steps_left(doc)), step_changes=unfinished)


def decide_reconcile(active: dict | None, doc: dict | None, max_attempts: int = MAX_ATTEMPTS) -> Decision:
    """At worker start, with no step running: what to do with the transaction owning the service
    (`doc` is None when its journal is missing or unreadable)."""
    if not active or not active.get("txn"):
        return Decision(Action.NOTHING)
    if doc is None or doc["status"] in FINAL_STATES:
        return Decision(Action.RELEASE)
    if all_steps_ok(doc):
        return Decision(Action.FINISH, FINISHED_LATE)
    attempt = doc["attempt"] + 1
    if attempt > max_attempts:
        return Decision(Action.GIVE_UP, f"interrupted {attempt - 1} times; stopped (resume by hand: "
                                        f"python -m manage.rollback resume {doc['txn']})")
    left = tuple(steps_left(doc))
    died_in = {s: StepState.INTERRUPTED for s in left if step_state(doc, s) is StepState.RUNNING}
    return Decision(Action.RESUME, attempt=attempt, steps=left, step_changes=died_in)


# -- the transaction ---------------------------------------------------------------------------
class RestoreTxn:
    """One restore transaction; every change of its journal and of the service's owner goes through it."""

    def __init__(self, settings: Settings, txn: str, lock: ServiceLock | None = None):
        self.settings = settings
        self.txn = txn
        self.lock = lock or ServiceLock(settings.backup_dir)
        self.journal = Journal(settings.backup_dir)

    @classmethod
    def admit(cls, settings: Settings, snapshot_ref: str, reason: str, auto: bool = False,
              requested_by: str = "cli") -> tuple["RestoreTxn", dict]:
        """Validate the request, claim the service for a new txn and create its journal."""
        reason = (reason or "").strip()
        if not reason:
            raise PreflightFailed("a reason is required (e.g. --reason readyz_fail)")
        entry = Manifest.for_settings(settings).resolve(snapshot_ref)
        txn = cls(settings, new_txn_id())
        try:
            with txn._holding("admission", wait_sec=ADMISSION_WAIT_SEC):
                decision = decide_admission(txn.lock.active())
                if decision.action is Action.REFUSE:
                    raise decision.error
                doc = txn.journal.create(txn.txn, snapshot_id=entry["id"], reason=reason, auto=bool(auto),
                                         requested_by=requested_by)
                txn._claim(entry["id"])
        except LockHeld as exc:
            txn._log("restore", "refused", reason=reason, error=str(exc))
            raise
        txn._log("restore", "queued", snapshot=entry["id"], reason=reason, auto=str(bool(auto)).lower(),
                 by=requested_by)
        return txn, doc

    def load(self) -> dict:
        return self.journal.load(self.txn)

    def result(self) -> RestoreResult:
        return RestoreResult.from_journal(self.load())

    # -- steps ---------------------------------------------------------------------------------
    def run_step(self, step: str, attempt: int | None = None, progress: Progress | Sink | None = None) -> dict:
        """Run one step idempotently; returns {"step", "status": "ok"|"skipped", "detail"}."""
        validate_txn_id(self.txn)
        if step not in RESTORE_STEPS:
            raise RollbackError(f"unknown step {step}")
        with self._holding(step, wait_sec=STEP_LOCK_WAIT_SEC):
            doc = self.load()
            decision = decide_step(doc, step, attempt, self.lock.active())
            if decision.action is Action.REFUSE:
                raise decision.error
            if decision.action is Action.FINISH:
                self.close(TxnStatus.SUCCEEDED, note=decision.why)
            if decision.action is not Action.RUN:
                return {"step": step, "status": "skipped", "detail": decision.why}
            detail = self._run(step, doc["snapshot_id"], as_progress(progress).scoped(step))
        return {"step": step, "status": "ok", "detail": detail}

    def _run(self, step: str, snapshot_id: str, progress: Progress) -> str:
        # Imported here: the steps bring psycopg and the comparison code, which a client that only admits
        # a restore (the CLI, the console) need not load. The worker loads them at start (celeryconfig).
        from .restore_steps import STEP_FUNCTIONS, StepContext

        entry = Manifest.for_settings(self.settings).get(snapshot_id)
        ctx = StepContext(self.settings, self.txn, step, entry, self.journal, progress=progress)
        self.journal.step_started(self.txn, step)
        self._log(step, "start", snapshot=entry["id"])
        try:
            detail = STEP_FUNCTIONS[step](ctx)
        except Exception as exc:  # recorded, then raised; a KeyboardInterrupt leaves the step `running`
            raise self._record_failure(step, exc) from None
        self.journal.step_finished(self.txn, step, StepState.OK, detail=detail)
        self._log(step, "ok", detail=detail)
        if step == RESTORE_STEPS[-1]:
            self.close(TxnStatus.SUCCEEDED)
        return detail

    def _record_failure(self, step: str, exc: Exception) -> Exception:
        """Journal and log a step that raised; returns what to raise."""
        message = _failure_message(exc)
        if isinstance(exc, StepInterrupted):  # keep the service claimed: the state is half-done
            self.journal.step_finished(self.txn, step, StepState.INTERRUPTED, error=message)
            self.journal.update(self.txn, error=message)
            self._log(step, "interrupted", error=message)
            return exc
        self.journal.step_finished(self.txn, step, StepState.FAILED, error=message)
        self._log(step, "failed", error=message)
        self.close(TxnStatus.FAILED, error=message, failed_step=step)
        return StepFailed(step, message.removeprefix(f"step {step} failed: "))

    # -- transitions ---------------------------------------------------------------------------
    def close(self, status: TxnStatus | str, error: str | None = None, *, failed_step: str | None = None,
              note: str | None = None) -> dict:
        """End the transaction: the final journal status (a success with warnings is never plain
        `succeeded`), the service released, the final ROLLBACK line. Call with the service flock held."""
        status = TxnStatus(status)
        if status is TxnStatus.SUCCEEDED:
            doc = self.journal.finish(self.txn, success_status(self.load()))
        elif status is TxnStatus.FAILED:
            doc = self.journal.finish(self.txn, TxnStatus.FAILED, error=error)
        else:
            raise RollbackError(f"cannot close {self.txn} as {status}")
        self.lock.release(self.txn)
        if is_success(doc["status"]):
            self._log("restore", "ok", duration_sec=f"{total_duration(doc) or 0.0:.1f}", outcome=doc["status"],
                      warnings=len(doc["warnings"]) or None, note=note)
        else:  # a failed step's own line just above carries the error
            self._log("restore", "failed", failed_step=failed_step, error=None if failed_step else error)
        return doc

    def resume(self) -> dict:
        """Operator-driven resume of a failed or interrupted txn: reclaim the service, bump the attempt."""
        with self._holding("resume"):
            doc = self.load()
            decision = decide_resume(doc, self.lock.active())
            if decision.action is Action.REFUSE:
                raise decision.error
            if decision.action is Action.FINISH:
                self._claim(doc["snapshot_id"])
                return self.close(TxnStatus.SUCCEEDED, note=decision.why)
            for step, state in decision.step_changes.items():
                doc["steps"][step]["status"] = state
            doc = self.journal.update(self.txn, status=TxnStatus.RUNNING, error=None, attempt=decision.attempt,
                                      steps=doc["steps"])
            self._claim(doc["snapshot_id"])
        self._log("restore", "resume", attempt=doc["attempt"], by="operator")
        return doc

    def reconcile(self, active: dict) -> dict | None:
        """Settle this txn, which owns the service while no step runs (call with the flock held)."""
        try:
            doc = self.load()
        except RollbackError:
            doc = None
        decision = decide_reconcile(active, doc)
        if decision.action is Action.RELEASE:
            self.lock.release(self.txn)
            return {"action": "released", "txn": self.txn}
        if decision.action is Action.FINISH:
            self.close(TxnStatus.SUCCEEDED, note=decision.why)
            return {"action": "finished", "txn": self.txn}
        if decision.action is Action.GIVE_UP:
            self.close(TxnStatus.FAILED, error=decision.why)
            return {"action": "failed", "txn": self.txn, "error": decision.why}
        if decision.action is not Action.RESUME:
            return None
        for step, state in decision.step_changes.items():
            self.journal.step_finished(self.txn, step, state, error="worker died during the step")
        self.journal.update(self.txn, attempt=decision.attempt)
        self._log("restore", "resume", attempt=decision.attempt, steps=",".join(decision.steps))
        return {"action": "resume", "txn": self.txn, "attempt": decision.attempt, "steps": list(decision.steps)}

    def abandon(self, error: str) -> None:
        """Fail an admitted txn before any step ran (e.g. the broker refused the canvas)."""
        with self._holding("abandon", wait_sec=STEP_LOCK_WAIT_SEC):
            self.close(TxnStatus.FAILED, error=error)

    # -- plumbing ------------------------------------------------------------------------------
    def _holding(self, step: str, wait_sec: float = 0.0) -> ContextManager[None]:
        return self.lock.held({"kind": "restore", "txn": self.txn, "step": step}, wait_sec=wait_sec)

    def _claim(self, snapshot_id: str) -> None:
        self.lock.claim({"kind": "restore", "txn": self.txn, "snapshot_id": snapshot_id})

    def _log(self, step: str, status: str, **fields) -> None:
        logbook.rollback_event(self.settings.rollback_log, self.txn, step, status, **fields)


def _failure_message(exc: Exception) -> str:
    if isinstance(exc, RollbackError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


# -- entry points (the CLI, the Celery tasks, the web and tests call these) -------------------
def begin_restore(settings: Settings, snapshot_ref: str, reason: str, auto: bool = False,
                  requested_by: str = "cli") -> dict:
    """Admit a restore; returns its new journal."""
    return RestoreTxn.admit(settings, snapshot_ref, reason, auto, requested_by)[1]


def run_step(settings: Settings, txn: str, step: str, attempt: int | None = None,
             progress: Progress | Sink | None = None) -> dict:
    """Run one step of `txn` idempotently; returns {"step", "status", "detail"}."""
    return RestoreTxn(settings, txn).run_step(step, attempt, progress)


def run_restore_local(settings: Settings, snapshot_ref: str, reason: str, auto: bool = False,
                      requested_by: str = "cli --local", progress: Progress | Sink | None = None) -> dict:
    """Admit and run a whole restore in this process (no broker); returns the journal."""
    txn, _ = RestoreTxn.admit(settings, snapshot_ref, reason, auto, requested_by)
    return _run_all(txn, progress)


def run_remaining(settings: Settings, txn: str, progress: Progress | Sink | None = None) -> dict:
    """Run every step not yet done (in this process); returns the journal."""
    return _run_all(RestoreTxn(settings, txn), progress)


def _run_all(txn: RestoreTxn, progress: Progress | Sink | None) -> dict:
    attempt = txn.load()["attempt"]
    for step in RESTORE_STEPS:  # the last delivery closes the transaction, also when it finds every step done
        txn.run_step(step, attempt, progress)
    return txn.load()


def restore_summary(doc: dict) -> dict:
    """The outcome as adapters show it (see RestoreResult)."""
    return RestoreResult.from_journal(doc).to_dict()


def reconcile(settings: Settings) -> dict | None:
    """At worker start: settle a restore left unfinished by a dead process. Returns {"action": "resume",
    "txn", "attempt", "steps"} when it should be resumed (the attempt is bumped, so deliveries of the old
    canvas become no-ops), {"action": "failed" | "finished" | "released", "txn", ...} when it only needed
    closing, or None when there is nothing to do or a step is running."""
    if not settings.backup_dir.exists():
        return None
    lock = ServiceLock(settings.backup_dir)
    try:
        with lock.held({"kind": "reconcile"}):
            active = lock.active()
            if decide_reconcile(active, None).action is Action.NOTHING:
                return None
            return RestoreTxn(settings, active["txn"], lock).reconcile(active)
    except LockHeld:
        return None  # a step is running right now: its process is alive


def resume(settings: Settings, txn: str) -> dict:
    """Operator-driven resume of a failed or interrupted txn: reclaim the service, bump the attempt."""
    return RestoreTxn(settings, txn).resume()


def abandon(settings: Settings, txn: str, error: str) -> None:
    """Mark an admitted txn failed before any step ran (e.g. the broker refused the canvas)."""
    RestoreTxn(settings, txn).abandon(error)
