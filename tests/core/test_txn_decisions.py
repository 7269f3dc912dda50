"""The rules of a restore transaction and of retention, as pure functions: no Postgres, no Redis, no disk.

Each case is (journal document, active-lock record, ...) → the decision the transaction must take."""

from __future__ import annotations

import pytest

from rollback.errors import LockHeld, PreflightFailed, RollbackError
from rollback.journal import RESTORE_STEPS, StepState
from rollback.restore import (MAX_ATTEMPTS, Action, decide_admission, decide_reconcile, decide_resume, decide_step)
from rollback.retention import choose_prunable

TXN = "txn-20260101T000000Z-abcdef"
OTHER = "txn-20260101T000100Z-123456"
OWNER = {"kind": "restore", "txn": TXN, "snapshot_id": "20260101T000000Z-000001"}
INTRUDER = {"kind": "restore", "txn": OTHER, "snapshot_id": "20260101T000000Z-000001"}
SNAPSHOT_HOLDER = {"kind": "snapshot", "snapshot_id": "20260101T000000Z-000002"}

OK, PENDING, RUNNING, FAILED, INTERRUPTED = (StepState.OK, StepState.PENDING, StepState.RUNNING, StepState.FAILED,
                                             StepState.INTERRUPTED)


def journal(*states: str, status: str = "running", attempt: int = 1) -> dict:
    """A journal document whose steps have `states` in order (the rest pending), as read from disk."""
    states = tuple(str(s) for s in states) + ("pending",) * (len(RESTORE_STEPS) - len(states))
    return {"txn": TXN, "status": status, "attempt": attempt, "snapshot_id": "20260101T000000Z-000001",
            "steps": {step: {"status": state} for step, state in zip(RESTORE_STEPS, states)},
            "warnings": [], "notes": [], "marks": {}}


ALL_OK = (OK,) * len(RESTORE_STEPS)


# -- a delivery of one step ------------------------------------------------------------------------
@pytest.mark.parametrize("doc, step, attempt, active, action, why", [
    # finished transactions and superseded deliveries are no-ops, whoever owns the service
    (journal(*ALL_OK, status="succeeded"), "db", 1, None, Action.SKIP, "transaction already succeeded"),
    (journal(OK, FAILED, status="failed"), "db", 1, INTRUDER, Action.SKIP, "transaction already failed"),
    (journal(OK, status="succeeded_with_warnings"), "data", 1, OWNER, Action.SKIP, "already succeeded_with_warnings"),
    (journal(OK, attempt=2), "db", 1, OWNER, Action.SKIP, "superseded delivery (attempt 1, journal is at 2)"),
    (journal(OK, attempt=2), "db", 3, None, Action.SKIP, "superseded delivery (attempt 3, journal is at 2)"),
    # what is done is not done again; the delivery that finds every step done closes the transaction
    (journal(OK, OK), "preflight", 1, OWNER, Action.SKIP, "already done"),
    (journal(*ALL_OK), "readyz", 1, OWNER, Action.FINISH, "every step was already done"),
    (journal(*ALL_OK, attempt=2), "preflight", None, OWNER, Action.FINISH, "every step was already done"),
    # the next step in order runs (a local run passes no attempt)
    (journal(), "preflight", 1, OWNER, Action.RUN, ""),
    (journal(OK, OK, OK), "code", 1, OWNER, Action.RUN, ""),
    (journal(OK, PENDING, attempt=3), "db", None, OWNER, Action.RUN, ""),
    (journal(OK, RUNNING), "db", 1, OWNER, Action.RUN, ""),  # re-delivered after the worker died in it
])
def test_a_step_delivery_is_run_skipped_or_finishes(doc, step, attempt, active, action, why):
    decision = decide_step(doc, step, attempt, active)
    assert decision.action is action and why in decision.why and decision.error is None


@pytest.mark.parametrize("doc, step, active, error, message", [
    (journal(OK), "db", None, LockHeld, f"transaction {TXN} does not own the service"),
    (journal(OK), "db", INTRUDER, LockHeld, f"restore {OTHER} in progress"),
    (journal(OK), "db", SNAPSHOT_HOLDER, LockHeld, "does not own the service"),
    (journal(*ALL_OK), "readyz", INTRUDER, LockHeld, "does not own the service"),  # not even to finish
    (journal(OK, FAILED), "data", OWNER, RollbackError, "step data refused: the earlier step db is not finished"),
    (journal(), "readyz", OWNER, RollbackError, "the earlier step preflight is not finished"),
    (journal(OK, OK, INTERRUPTED), "code", OWNER, RollbackError, "the earlier step data is not finished"),
])
def test_a_step_delivery_is_refused(doc, step, active, error, message):
    decision = decide_step(doc, step, 1, active)
    assert decision.action is Action.REFUSE and type(decision.error) is error and message in str(decision.error)


# -- admission and the operator's resume ---------------------------------------------------------
@pytest.mark.parametrize("active, action", [(None, Action.RUN), ({}, Action.RUN), (OWNER, Action.REFUSE),
                                            (SNAPSHOT_HOLDER, Action.REFUSE)])
def test_a_new_restore_is_refused_while_the_service_is_owned(active, action):
    decision = decide_admission(active)
    assert decision.action is action
    assert (decision.error is None) if action is Action.RUN else isinstance(decision.error, LockHeld)


@pytest.mark.parametrize("doc, active, attempt, steps, reset", [
    (journal(OK, FAILED, status="failed"), None, 2, ("db", "data", "code", "readyz"), {"db": PENDING}),
    (journal(OK, OK, INTERRUPTED, attempt=2), OWNER, 3, ("data", "code", "readyz"), {"data": PENDING}),
    (journal(OK, RUNNING, status="running"), OWNER, 2, ("db", "data", "code", "readyz"), {"db": PENDING}),
    (journal(status="failed"), None, 2, RESTORE_STEPS, {}),  # abandoned before the preflight ran
])
def test_resume_bumps_the_attempt_and_resets_unfinished_steps(doc, active, attempt, steps, reset):
    decision = decide_resume(doc, active)
    assert (decision.action, decision.attempt, decision.steps) == (Action.RESUME, attempt, steps)
    assert dict(decision.step_changes) == reset


@pytest.mark.parametrize("doc, active, action, error", [
    (journal(*ALL_OK, status="succeeded"), None, Action.REFUSE, PreflightFailed),
    (journal(*ALL_OK, status="succeeded_with_warnings"), None, Action.REFUSE, PreflightFailed),
    (journal(OK, FAILED, status="failed"), INTRUDER, Action.REFUSE, LockHeld),
    (journal(OK, FAILED, status="failed"), SNAPSHOT_HOLDER, Action.REFUSE, LockHeld),
    (journal(*ALL_OK, status="running"), OWNER, Action.FINISH, None),  # died before its final write
    (journal(*ALL_OK, status="failed"), None, Action.FINISH, None),
])
def test_resume_refuses_or_only_finishes(doc, active, action, error):
    decision = decide_resume(doc, active)
    assert decision.action is action
    assert (decision.error is None) if error is None else type(decision.error) is error


# -- reconcile at worker start ---------------------------------------------------------------------
@pytest.mark.parametrize("active, doc, action", [
    (None, None, Action.NOTHING),
    (SNAPSHOT_HOLDER, None, Action.NOTHING),  # not a transaction
    (OWNER, None, Action.RELEASE),  # its journal is missing or unreadable
    (OWNER, journal(*ALL_OK, status="succeeded"), Action.RELEASE),  # died between the journal and the release
    (OWNER, journal(OK, FAILED, status="failed"), Action.RELEASE),
    (OWNER, journal(*ALL_OK), Action.FINISH),
    (OWNER, journal(OK, OK, OK, OK, FAILED, attempt=MAX_ATTEMPTS), Action.GIVE_UP),
])
def test_reconcile_settles_the_owner(active, doc, action):
    assert decide_reconcile(active, doc).action is action


@pytest.mark.parametrize("doc, attempt, steps, interrupted", [
    (journal(OK, RUNNING), 2, ("db", "data", "code", "readyz"), {"db": INTERRUPTED}),
    (journal(OK, OK, INTERRUPTED, attempt=2), 3, ("data", "code", "readyz"), {}),
    (journal(attempt=MAX_ATTEMPTS - 1), MAX_ATTEMPTS, RESTORE_STEPS, {}),  # admitted, never started
])
def test_reconcile_resumes_what_a_dead_worker_left(doc, attempt, steps, interrupted):
    decision = decide_reconcile(OWNER, doc)
    assert (decision.action, decision.attempt, decision.steps) == (Action.RESUME, attempt, steps)
    assert dict(decision.step_changes) == interrupted


def test_reconcile_gives_up_after_max_attempts_and_says_how_to_resume():
    decision = decide_reconcile(OWNER, journal(OK, RUNNING, attempt=MAX_ATTEMPTS))
    assert decision.action is Action.GIVE_UP
    assert decision.why == (f"interrupted {MAX_ATTEMPTS} times; stopped (resume by hand: "
                            f"python -m manage.rollback resume {TXN})")
    assert decide_reconcile(OWNER, journal(OK, RUNNING, attempt=1), max_attempts=1).action is Action.GIVE_UP


# -- retention ---------------------------------------------------------------------------------------
def snap(n: int, ready: bool = False) -> dict:
    return {"id": f"20260101T0000{n:02d}Z-00000{n}", "ready_check": {"status": "ok"} if ready else None}


def ids(*numbers: int) -> list[str]:
    return [snap(n)["id"] for n in numbers]


@pytest.mark.parametrize("entries, keep, in_use, prunable", [
    ([snap(1), snap(2), snap(3)], 5, set(), []),  # fewer than kept
    ([snap(1), snap(2), snap(3), snap(4)], 2, set(), ids(1, 2)),
    ([snap(1), snap(2), snap(3), snap(4)], 1, set(), ids(1, 2, 3)),
    ([snap(1), snap(2, ready=True), snap(3), snap(4)], 1, set(), ids(1, 3)),  # the newest ready one stays
    ([snap(1, ready=True), snap(2, ready=True), snap(3)], 1, set(), ids(1)),  # only the newest ready one
    ([snap(1), snap(2), snap(3)], 1, set(ids(1)), ids(2)),  # a restore uses 1
    ([snap(4), snap(1), snap(2)], 1, set(), ids(4, 1)),  # manifest order, not id order, says which is newest
    ([], 3, set(), []),
])
def test_choose_prunable(entries, keep, in_use, prunable):
    assert choose_prunable(entries, keep, in_use) == prunable
