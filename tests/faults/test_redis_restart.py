"""Item 5: Redis (broker and result backend) restarts in the middle of a restore, with and without
persistence. The Redis is the session's private one (`private_redis`; the test database is on the private
Postgres too), restarted with its own command line; it is always brought back.

An operator starts the restore (`python -m manage.rollback restore`, which follows it through Celery);
Redis restarts while a step runs (deterministically: the last step is held by a /readyz answering 503;
FAULT_RUNS=full also restarts it at random points of the db and data steps). Then:
- no step ever runs twice at the same time (the log's start/end events of each step alternate);
- the journal lets the restore finish: by itself, or with `python -m manage.rollback resume <txn>`
  (retried like an operator would while the worker reconnects);
- nothing is lost: the state is the snapshot's and the replaced state is kept.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time

import pytest

from rollback.errors import LockHeld
from rollback.journal import Journal
from rollback.lock import ServiceLock
from tests.conftest import ROOT, cli
from tests.faults import figures as F
from tests.faults.conftest import (
    COMPONENTS, build_scenario, journal_doc, previous_state_lost, process_env, wait_final, wait_until)
from tests.faults.on_private_servers import celery_app, database_name, env, redis_db  # noqa: F401

_EVENT = re.compile(r"ROLLBACK id=(?P<txn>\S+) step=(?P<step>\w+) status=(?P<status>\w+)")


def step_overlaps(settings, txn: str) -> list[str]:
    """Steps that logged `start` twice without an end in between (two runs at once)."""
    running: dict[str, bool] = {}
    problems = []
    for line in settings.rollback_log.read_text().splitlines():
        m = _EVENT.search(line)
        if not m or m["txn"] != txn or m["step"] == "restore":
            continue
        if m["status"] == "start":
            if running.get(m["step"]):
                problems.append(f"{m['step']} started while already running")
            running[m["step"]] = True
        elif m["status"] in ("ok", "failed"):
            running[m["step"]] = False
    return problems


def _step_running(settings) -> bool:
    try:
        with ServiceLock(settings.backup_dir).held({"kind": "probe"}):
            return False
    except LockHeld:
        return True


def _settle(settings, txn: str, quiet_sec: float = 6.0, timeout: float = 120) -> dict:
    """Wait until the txn is final, or its journal stopped changing for `quiet_sec` with no step running."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        doc = journal_doc(settings, txn)
        if doc["status"] in ("succeeded", "failed"):
            return doc
        if doc["updated_at"] != last:
            last, since = doc["updated_at"], time.monotonic()
        elif time.monotonic() - since > quiet_sec and not _step_running(settings):
            return doc
        time.sleep(0.1)
    return journal_doc(settings, txn)


def _operator_resume(env, settings, txn: str, case) -> str:
    """`resume <txn>` until it is taken (the worker needs a few seconds to reconnect to Redis)."""
    for attempt in range(1, 5):
        done = cli(env, "resume", txn, timeout=200)
        if done.returncode == 0:
            return f"resumed by the operator (try {attempt})"
        case.note(f"resume try {attempt}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        doc = journal_doc(settings, txn)
        if doc["status"] == "succeeded":
            return f"resumed by the operator (try {attempt}, reported exit {done.returncode})"
        time.sleep(3)
    return "NOT RESUMED"


def _start_follower(env, snapshot_id: str, reason: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "manage.rollback", "restore", "--snapshot", snapshot_id,
                             "--reason", reason, "--yes"], cwd=ROOT, env=process_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_a_worker(env, case, timeout: float = 60) -> None:
    """What an operator checks before a new restore: a worker answers through the broker."""
    t0 = time.monotonic()
    while True:
        done = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout", "1"],
                              cwd=ROOT, env=process_env(env), capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            break
        assert time.monotonic() - t0 < timeout, f"no worker answered for {timeout:g}s: {done.stdout[-500:]}"
        time.sleep(0.5)
    if time.monotonic() - t0 > 3:
        case.note(f"the worker answered again {time.monotonic() - t0:.0f}s after the previous round")


def _admitted(settings, reason: str, follower: subprocess.Popen) -> dict:
    def admitted():
        return next((d for d in Journal(settings.backup_dir).all() if d.get("reason") == reason), None)

    doc = wait_until(lambda: admitted() or follower.poll() is not None, 60, 0.01, "the restore to be admitted")
    if doc is True:  # the CLI ended: admitted just before, or refused
        doc = admitted()
    if not doc:
        _out, err = follower.communicate()
        raise AssertionError(f"the restore was not admitted: cli exit {follower.returncode}: {err.strip()[-1500:]}")
    return doc


@pytest.mark.parametrize("persist", [False, True], ids=["without-persistence", "with-persistence"])
def test_redis_restarts_mid_restore(persist, settings, live_env, workers, gate, figures, private_redis):
    rng = random.Random()
    scenario = build_scenario(settings, big_mib=24)
    env = dict(live_env, READYZ_URL=gate.url, ROLLBACK_READY_TIMEOUT_SEC="120", ROLLBACK_READY_INTERVAL_SEC="0.2")
    workers.start(env)
    case = figures.case(5, f"Redis restarted mid-restore ({'with' if persist else 'without'} persistence)")
    points = ["readyz"] + ([rng.choice(("db", "data")) for _ in range(F.runs(0, 2))])
    for step in points:
        _wait_for_a_worker(env, case)  # after a restart the worker reconnects first (2 to 4 s measured)
        case.begin()
        scenario.reset_to_bad()
        gate.close() if step == "readyz" else gate.open()
        reason = f"redis restart {time.monotonic_ns()}"
        follower = _start_follower(env, scenario.good["id"], reason)
        try:
            txn = _admitted(settings, reason, follower)["txn"]
            wait_until(lambda: (d := journal_doc(settings, txn)) and (
                d["steps"][step]["status"] != "pending" or d["status"] in ("succeeded", "failed")), 90, 0.002,
                f"step {step}")
            where = journal_doc(settings, txn).get("current_step") or "between steps"
            private_redis.restart(persist)
            gate.open()
            try:
                _out, err = follower.communicate(timeout=150)
                cli_result = f"cli exit {follower.returncode}" + (" (traceback)" if "Traceback" in err else "")
            except subprocess.TimeoutExpired:
                follower.kill()
                _out, err = follower.communicate()
                cli_result = "cli HUNG"
            final = _settle(settings, txn)
            how = "finished by itself" if final["status"] == "succeeded" else _operator_resume(env, settings, txn, case)
            final = wait_final(settings, txn, timeout=150)
        finally:
            gate.open()
            if follower.poll() is None:
                follower.kill()
        overlaps = step_overlaps(settings, txn)
        whole = scenario.classify() == dict.fromkeys(COMPONENTS, "good")
        lost = previous_state_lost(settings, txn, scenario.states[scenario.bad["id"]])
        case.run(f"restarted in {where}: {how}; {cli_result}", data_lost=lost)
        assert not overlaps, overlaps
        assert final["status"] == "succeeded" and whole and lost == 0, (how, final.get("error"))
        assert ServiceLock(settings.backup_dir).active() is None
        assert cli_result != "cli HUNG"


def test_a_redis_restart_neither_fails_the_restore_nor_crashes_its_follower(settings, live_env, workers, gate,
                                                                            private_redis):
    scenario = build_scenario(settings)
    env = dict(live_env, READYZ_URL=gate.url, ROLLBACK_READY_TIMEOUT_SEC="120", ROLLBACK_READY_INTERVAL_SEC="0.2")
    workers.start(env)
    gate.close()
    reason = f"redis blip {time.monotonic_ns()}"
    follower = _start_follower(env, scenario.good["id"], reason)
    try:
        txn = _admitted(settings, reason, follower)["txn"]
        wait_until(lambda: journal_doc(settings, txn)["steps"]["readyz"]["status"] == "running", 90, 0.01, "readyz")
        time.sleep(0.5)
        private_redis.restart(persist=True)
        gate.open()
        _out, err = follower.communicate(timeout=150)
        final = _settle(settings, txn)
    finally:
        gate.open()
        if follower.poll() is None:
            follower.kill()
    try:
        assert final["status"] == "succeeded", final.get("error")
        assert follower.returncode == 0 and "Traceback" not in err, err[-500:]
    finally:
        if journal_doc(settings, txn)["status"] != "succeeded":
            _operator_resume(env, settings, txn, type("N", (), {"note": staticmethod(lambda t: None)})())


def test_resume_without_a_worker_leaves_the_txn_as_it_was(settings, live_env, gate):
    from rollback import restore as core
    from rollback.snapshot import create_snapshot
    from rollback.errors import StepFailed

    snap = create_snapshot(settings)
    failing = settings.with_overrides(readyz_url=gate.url, ready_timeout_sec=0.5, ready_interval_sec=0.1)
    doc = core.begin_restore(failing, snap["id"], reason="readyz fails")
    with pytest.raises(StepFailed):
        core.run_remaining(failing, doc["txn"])
    assert journal_doc(settings, doc["txn"])["status"] == "failed"
    done = cli(live_env, "resume", doc["txn"], timeout=60)  # no worker is running
    assert done.returncode == 1 and "no Celery worker" in done.stderr, done.stderr
    after = journal_doc(settings, doc["txn"])
    assert after["status"] == "failed" and ServiceLock(settings.backup_dir).active() is None, after["status"]
