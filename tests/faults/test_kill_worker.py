"""Item 1: the worker dies at a random point of a restore step; a fresh worker finishes the restore.

Three ways to die, as a platform does it:
- `child`: kill -9 of the prefork pool child running the step (the main process survives and the
  message is redelivered, task_reject_on_worker_lost);
- `group`: kill -9 of the whole process group (nothing survives; the next worker reconciles the
  journal at start and resumes with a bumped attempt);
- `term`: SIGTERM to the group, as on a redeploy (warm shutdown; SIGKILL after a 30 s grace).

Each run starts from the bad deploy's state and restores the good snapshot taken before it. Right after the kill, the database, the data tree and the code must each equal the
state before the restore or the snapshot's; after the fresh worker, all three equal the snapshot's,
the journal says succeeded, and the state that was replaced is still kept (`data lost` counts any
component that was not).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from rollback import restore as core
from rollback.lock import ServiceLock
from tasks.restore import enqueue_restore
from tests.faults import figures as F
from tests.conftest import git
from tests.faults.conftest import build_scenario, journal_doc, previous_state_lost, wait_final, wait_until

STEPS = ("preflight", "db", "data", "code")
BIG_MIB = 48 if F.full_mode() else 16


def _calibrate(settings, scenario, env, workers) -> dict:
    """One restore without a kill, to learn how long each step lasts here."""
    worker = workers.start(env)
    doc, _ = enqueue_restore(scenario.good["id"], reason="calibration", requested_by="faults", settings=settings)
    final = wait_final(settings, doc["txn"])
    assert final["status"] == "succeeded", final
    assert scenario.classify() == {"db": "good", "data": "good", "code": "good"}
    return worker, {s: max(final["steps"][s].get("duration_sec") or 0.0, 0.01) for s in STEPS}


def _kill_run(settings, scenario, env, workers, worker, rng, mode: str, step: str, duration: float, case):
    """One restore killed in `step`; returns the worker alive afterwards."""
    scenario.reset_to_bad()
    case.begin()
    before_id, target, target_name = scenario.bad["id"], scenario.good, "good"
    doc, _ = enqueue_restore(target["id"], reason=f"kill {mode} in {step}", requested_by="faults", settings=settings)
    txn = doc["txn"]

    def reached():
        d = journal_doc(settings, txn)
        if d is None:
            return None
        if d["status"] in ("succeeded", "failed") or d["steps"][step]["status"] in ("running", "ok"):
            return d
        return None

    wait_until(reached, 60, 0.002, f"step {step} of {txn} to start")
    time.sleep(rng.uniform(0, duration * 0.9))
    at_kill = journal_doc(settings, txn)
    where = at_kill.get("current_step") if at_kill["status"] == "running" else f"after {at_kill['status']}"
    if mode == "child":
        children = worker.children()
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    elif mode == "group":
        worker.kill_group(signal.SIGKILL)
        worker.proc.wait(30)
        worker.kill_group(signal.SIGKILL)  # orphans, if any
    else:
        worker.kill_group(signal.SIGTERM)
        try:
            worker.proc.wait(30)
        except Exception:
            worker.kill_group(signal.SIGKILL)
            worker.proc.wait(30)
    torn = None
    if mode != "child":
        # Nothing runs now: every component must be whole, the previous state or the snapshot's.
        seen = scenario.classify()
        torn = {c: v for c, v in seen.items() if v not in ("good", "bad")}
        if torn:
            case.note(f"after the kill in {where}: {torn} (live component absent between two renames)")
        worker = workers.start(env)  # reconciles and resumes at start
    final = wait_final(settings, txn, timeout=180)
    known = None
    stale_lock = settings.app_repo_dir / ".git" / "index.lock"
    if final["status"] == "failed" and final.get("error", "").startswith("step code failed") and stale_lock.exists():
        # Known defect (test_code_step_recovers_from_a_killed_git_command): clear what git left, resume by hand.
        known = "stale .git/index.lock after a kill in git reset: resumed by hand"
        stale_lock.unlink()
        core.resume(settings, txn)
        final = core.run_remaining(settings, txn)
    if final["status"] == "succeeded" and stale_lock.exists():
        # Same defect: the re-run found HEAD already at the snapshot and returned without clearing the lock
        # a killed git left; the next git command of the deploy would fail on it.
        known = "stale .git/index.lock left after a successful resume: removed by hand"
        stale_lock.unlink()
    seen = scenario.classify()
    lost = previous_state_lost(settings, txn, scenario.states[before_id])
    ok = final["status"] == "succeeded" and seen == dict.fromkeys(seen, target_name) and \
        ServiceLock(settings.backup_dir).active() is None
    outcome = ("torn-then-resumed" if torn else f"{'resumed' if mode != 'child' else 'redelivered'}") if ok else "FAILED"
    if known and ok:
        outcome = f"known defect: {known}"
    case.run(f"{outcome} (killed in {where})" if where != step else outcome, data_lost=lost)
    assert ok, (mode, step, where, final["status"], final.get("error"), seen, worker.output()[-3000:])
    assert lost == 0, (mode, step, where, txn)
    return worker


@pytest.mark.parametrize("mode", ["child", "group", "term"])
def test_worker_killed_at_random_points_of_each_step(mode, settings, live_env, workers, figures):
    seed = int(os.environ.get("FAULT_SEED", "0") or 0) or random.randrange(1 << 30)
    rng = random.Random(seed)
    scenario = build_scenario(settings, BIG_MIB)
    worker, durations = _calibrate(settings, scenario, live_env, workers)
    per_step = F.runs(1 if mode != "term" else 0, 20 if mode != "term" else 5)
    steps = list(STEPS) * per_step if per_step else [rng.choice(("db", "data"))]
    rng.shuffle(steps)
    cases = {s: figures.case(1, f"kill {'-9 child' if mode == 'child' else '-9 group' if mode == 'group' else '-TERM group'}"
                                f" in {s} (seed {seed})") for s in dict.fromkeys(steps)}
    for step in steps:
        worker = _kill_run(settings, scenario, live_env, workers, worker, rng, mode, step, durations[step], cases[step])


@pytest.mark.parametrize("killed_in", ["git reset (tree half written)", "git status (HEAD already at the snapshot)"])
def test_code_step_recovers_from_a_killed_git_command(killed_in, settings):
    """What a kill -9 inside the code step's git leaves: index.lock, and maybe a partly checked-out tree."""
    scenario = build_scenario(settings)
    doc = core.begin_restore(settings, scenario.good["id"], reason=f"killed {killed_in}")
    for step in ("preflight", "db", "data"):
        core.run_step(settings, doc["txn"], step, doc["attempt"])
    repo = settings.app_repo_dir
    if killed_in.startswith("git status"):
        git(repo, "reset", "-q", "--hard", scenario.good["app_revision"])  # the reset had completed
    else:
        (repo / "app.py").write_text("half written by a killed checkout")
    (repo / ".git" / "index.lock").write_bytes(b"")
    try:
        core.run_step(settings, doc["txn"], "code", doc["attempt"])
        core.run_step(settings, doc["txn"], "readyz", doc["attempt"])
        assert scenario.classify() == {"db": "good", "data": "good", "code": "good"}
        assert not (repo / ".git" / "index.lock").exists(), "a stale index.lock was left behind"
    finally:
        (repo / ".git" / "index.lock").unlink(missing_ok=True)
