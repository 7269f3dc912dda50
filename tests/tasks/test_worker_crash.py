"""A worker killed with SIGKILL (its whole process group) in the middle of a restore step:
the next worker to start reconciles the journal and resumes the restore to completion."""

from __future__ import annotations

import os
import signal
import time

from rollback.journal import Journal
from rollback.lock import ServiceLock
from rollback.snapshot import create_snapshot
from tasks.restore import enqueue_restore
from tests import state


def test_next_worker_resumes_a_restore_killed_mid_step(settings, live_env, worker_process):
    (settings.data_base_dir / "uploads" / "big.bin").write_bytes(os.urandom(48 << 20))
    before = state.capture(settings)
    create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)

    first = worker_process("w1")
    doc, _ = enqueue_restore("latest", reason="crash test", requested_by="test", settings=settings)
    journal = Journal(settings.backup_dir)
    killed_in = None
    deadline = time.monotonic() + 60
    while killed_in is None and time.monotonic() < deadline:
        steps = journal.load(doc["txn"])["steps"]
        running = [name for name, s in steps.items() if s["status"] == "running"]
        if running and running[0] in ("db", "data"):
            os.killpg(first.pid, signal.SIGKILL)
            killed_in = running[0]
        time.sleep(0.005)
    first.wait(10)
    assert killed_in, "the restore finished before the worker could be killed"
    assert journal.load(doc["txn"])["status"] == "running"

    worker_process("w2")  # reconciles at start
    deadline = time.monotonic() + 120
    while journal.load(doc["txn"])["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)

    final = journal.load(doc["txn"])
    assert final["status"] == "succeeded", final
    assert final["attempt"] == 2
    assert final["steps"][killed_in]["runs"] == 2
    assert state.capture(settings) == before
    assert ServiceLock(settings.backup_dir).active() is None
    assert "status=resume attempt=2" in settings.rollback_log.read_text()
