"""A restore whose every step was done when its process died is closed as a success by the next worker's
reconcile; no step task runs for it, so the worker sends its discarded-writes report itself."""

from __future__ import annotations

from rollback import discarded
from rollback.journal import Journal, TxnStatus
from rollback.lock import ServiceLock
from rollback.restore import run_restore_local
from tests.faults.conftest import build_scenario, wait_until


def test_worker_start_finishes_a_done_restore_and_reports_what_it_discarded(settings, live_env, workers):
    scenario = build_scenario(settings)
    doc = run_restore_local(settings, scenario.good["id"], reason="died before closing")
    assert doc["status"] == "succeeded", doc
    txn = doc["txn"]
    # As if the process died between the last step's mark and the journal's close: steps ok, txn running,
    # the service still claimed by it; and no report yet.
    Journal(settings.backup_dir).update(txn, status=TxnStatus.RUNNING, finished_at=None)
    ServiceLock(settings.backup_dir).claim({"kind": "restore", "txn": txn, "snapshot_id": scenario.good["id"]})
    assert discarded.load_summary(settings, txn) is None

    worker = workers.start(live_env)
    wait_until(lambda: Journal(settings.backup_dir).load(txn)["status"] == "succeeded", 60,
               what=f"reconcile to close {txn}")
    assert ServiceLock(settings.backup_dir).active() is None
    summary = wait_until(lambda: (s := discarded.load_summary(settings, txn)) and s.get("status") == "done" and s,
                         120, interval=0.2, what="the discarded-writes report")
    # The bad deploy's own writes are what the restore discarded: its rows and its new file.
    assert summary["totals"]["insert"] > 0 and summary["files"]["added"] > 0, (summary, worker.output()[-2000:])
