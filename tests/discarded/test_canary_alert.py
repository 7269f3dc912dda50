"""The canary's automatic rollback says in its webhook alert what the rollback discarded: it waits
(boundedly) for the report the worker makes after the restore, and puts the counts in the alert."""

from __future__ import annotations

from rollback import canary
from rollback.discarded import build_report, mark_pending
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from tests import state
from tests.discarded.writes import GroundTruth, keep_writing


def test_rolled_back_alert_carries_the_counts(settings, readyz, webhook):
    snap = create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    truth = GroundTruth.of_bad_deploy()
    keep_writing(settings, truth)
    cs = settings.with_overrides(readyz_url=readyz.url, notify_webhook_url=webhook.url, ready_timeout_sec=2.0,
                                 ready_interval_sec=0.5)
    readyz.set("fail")
    restored = []

    def start_restore(s, snapshot_id):  # the worker's part, in this process: restore, then request the report
        readyz.set("ok")
        doc = run_restore_local(s, snapshot_id, reason="readyz_fail", auto=True, requested_by="canary")
        mark_pending(s, doc["txn"])
        restored.append(doc["txn"])
        return doc

    clock, waited = [1_000_000.0], []
    for _ in range(200):
        out = canary.tick(cs, "d-counts", snap["id"], "run-1", start_restore, now=lambda: clock[0])
        if "waiting for its discarded-writes report" in out.message:
            waited.append(clock[0])
            if len(waited) == 3:  # the report arrives while the canary waits
                build_report(cs, restored[0])
        if out.verdict is not None:
            break
        clock[0] += out.wait
    assert out.verdict["status"] == "rolled_back" and len(waited) == 3
    alert = webhook.texts()[-1]
    assert "rolled back automatically" in alert
    per = {t: {op: len(keys) for op, keys in truth.expected(t).items()} for t in ("users", "trips")}
    per["audit_events"] = {"insert": 1, "update": 0, "delete": 0}
    tables = ", ".join(f"{sum(per[t].values())} {t}" for t in sorted(per))
    totals = {op: sum(p[op] for p in per.values()) for op in ("insert", "update", "delete")}
    assert (f"{tables} row(s) ({totals['insert']} inserted, {totals['update']} updated, {totals['delete']} deleted)"
            in alert), alert
    assert "3 file(s) added" in alert and f"discarded {restored[0]}" in alert


def test_alert_without_a_report_says_so(settings, readyz, webhook):
    """No report requested (no worker hook): the alert is sent after a short grace, pointing at the command."""
    snap = create_snapshot(settings)
    cs = settings.with_overrides(readyz_url=readyz.url, notify_webhook_url=webhook.url, ready_timeout_sec=1.0,
                                 ready_interval_sec=0.5)
    readyz.set("fail")

    def start_restore(s, snapshot_id):
        readyz.set("ok")
        return run_restore_local(s, snapshot_id, reason="readyz_fail", auto=True, requested_by="canary")

    clock = [1_000_000.0]
    for _ in range(200):
        out = canary.tick(cs, "d-none", snap["id"], "run-1", start_restore, now=lambda: clock[0])
        if out.verdict is not None:
            break
        clock[0] += out.wait
    assert out.verdict["status"] == "rolled_back"
    assert "The discarded-writes report is not made: see `python -m manage.rollback discarded" in webhook.texts()[-1]
