"""The canary's decisions, tick by tick, against a scripted /readyz and a real webhook receiver.
Time is a fake clock; the restore is a recorded request whose journal the test finishes."""

from __future__ import annotations

import pytest

from manage.exit_codes import exit_code_for
from rollback import canary, notify
from rollback.errors import LockHeld, RollbackError, SnapshotNotFound
from rollback.ids import new_txn_id
from rollback.journal import Journal
from rollback.lock import ServiceLock
from rollback.manifest import Manifest
from rollback.settings import Settings

SNAP_OLD, SNAP_PRE = "20260101T000000Z-000001", "20260101T000100Z-000002"


def entry(snapshot_id: str, created_at: str, notes: str = "") -> dict:
    art = {"file": "x", "sha256": "0" * 64, "size": 1}
    return {"id": snapshot_id, "created_at": created_at, "notes": notes, "app_revision": "a" * 40,
            "alembic_revision": "0002_trips", "artifacts": {"db": dict(art), "data": dict(art)}, "ready_check": None}


@pytest.fixture
def cs(env, readyz, webhook) -> Settings:
    """Settings for canary ticks: two snapshots, the scripted /readyz, the webhook; 2 successes needed."""
    s = Settings.from_env(dict(env, READYZ_URL=readyz.url, ROLLBACK_NOTIFY_WEBHOOK_URL=webhook.url,
                               ROLLBACK_READY_SUCCESSES="2", ROLLBACK_READY_TIMEOUT_SEC="10",
                               ROLLBACK_READY_INTERVAL_SEC="1"))
    Manifest(s.backup_dir).add(entry(SNAP_OLD, "2026-01-01T00:00:00Z"))
    Manifest(s.backup_dir).add(entry(SNAP_PRE, "2026-01-01T00:01:00Z", notes="deploy 2026-01-01T00:01:00Z"))
    return s


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Restores:
    """Stands in for the worker: admits a journal per request, finished by the test."""

    def __init__(self, settings: Settings, refuse: list[Exception] | None = None):
        self.settings, self.refuse, self.calls = settings, list(refuse or []), []

    def __call__(self, settings: Settings, snapshot_id: str) -> dict:
        self.calls.append(snapshot_id)
        if self.refuse:
            raise self.refuse.pop(0)
        return Journal(settings.backup_dir).create(new_txn_id(), snapshot_id=snapshot_id, reason="readyz_fail",
                                                   auto=True)

    def finish_last(self, status: str, error: str | None = None) -> None:
        txn = Journal(self.settings.backup_dir).all()[-1]["txn"]
        Journal(self.settings.backup_dir).finish(txn, status, error=error)


def run(settings, deploy_id, restores, clock, run_id="run-1", snapshot=None, max_ticks=100) -> tuple[dict, list[str]]:
    """Tick until a verdict, advancing the fake clock by each requested wait."""
    messages = []
    for _ in range(max_ticks):
        out = canary.tick(settings, deploy_id, snapshot, run_id, restores, now=clock)
        messages.append(out.message)
        if out.verdict is not None:
            return out.verdict, messages
        clock.t += out.wait
    raise AssertionError(f"no verdict after {max_ticks} ticks: {messages[-3:]}")


def log_lines(settings) -> list[str]:
    return [line for line in settings.rollback_log.read_text().splitlines() if " CANARY " in line]


def test_ready_needs_consecutive_successes_and_marks_the_snapshot(cs, readyz, webhook):
    answers = [503, 200, 503, 200, 200]
    readyz.set(lambda n: answers[min(n, len(answers) - 1)])
    restores = Restores(cs)
    verdict, messages = run(cs, "d-ready", restores, Clock())

    assert verdict["status"] == "ready" and verdict["probes"] == 5 and verdict["snapshot_id"] == SNAP_PRE
    assert "probe 2: HTTP 200 (1/2 consecutive" in messages[1]
    check = Manifest(cs.backup_dir).get(SNAP_PRE)["ready_check"]
    assert check["status"] == "ok" and check["deploy_id"] == "d-ready" and check["at"]
    assert restores.calls == [] and webhook.messages == []
    assert "CANARY deploy=d-ready status=ready snapshot=" + SNAP_PRE in log_lines(cs)[-1]


def test_not_ready_rolls_back_once_per_deploy(cs, readyz, webhook):
    readyz.set("fail")
    restores, clock = Restores(cs), Clock()
    out = None
    for _ in range(50):  # watch until the rollback is requested
        out = canary.tick(cs, "d-bad", None, "run-1", restores, now=clock)
        if restores.calls:
            break
        clock.t += out.wait
    assert restores.calls == [SNAP_PRE] and out.verdict is None
    assert canary.load_record(cs, "d-bad")["phase"] == "restoring"
    clock.t += 3.5
    restores.finish_last("succeeded")
    verdict, _ = run(cs, "d-bad", restores, clock)

    assert verdict["status"] == "rolled_back" and verdict["recovery_sec"] == pytest.approx(3.5)
    assert verdict["rollback_txn"] == Journal(cs.backup_dir).all()[-1]["txn"]
    lines = log_lines(cs)
    assert any("status=not_ready" in l and "action=rollback" in l for l in lines)
    assert "status=rolled_back" in lines[-1] and "recovery_sec=3.5" in lines[-1]
    assert "Automatic rollback to snapshot" in webhook.texts()[0] and "rolled back automatically" in webhook.texts()[1]
    assert all(m["content_type"] == "application/json" for m in webhook.messages)

    # The same deploy watched again (a restart, a re-run of the hook): still failing, never a second rollback.
    verdict, _ = run(cs, "d-bad", restores, clock, run_id="run-2")
    assert verdict["status"] == "not_ready" and "already rolled back once" in verdict["message"]
    assert restores.calls == [SNAP_PRE]
    assert "not again" in webhook.texts()[-1]
    assert canary.load_record(cs, "d-bad")["runs"] == 2


def test_a_failed_automatic_restore_stops_and_alerts(cs, readyz, webhook):
    readyz.set("fail")
    restores, clock = Restores(cs), Clock()
    while not restores.calls:
        clock.t += canary.tick(cs, "d-worse", None, "r", restores, now=clock).wait or 0
    restores.finish_last("failed", error="step readyz failed: not ready within 90 s")
    verdict, _ = run(cs, "d-worse", restores, clock, run_id="r")

    assert verdict["status"] == "not_ready" and "failed" in verdict["message"]
    assert restores.calls == [SNAP_PRE]
    assert "FAILED: step readyz failed" in webhook.texts()[-1] and "no further automatic rollback" in webhook.texts()[-1]
    assert "phase=after_rollback" in log_lines(cs)[-1]


def test_canary_disabled_only_alerts(cs, readyz, webhook):
    readyz.set("fail")
    off = cs.with_overrides(canary_enabled=False)
    restores = Restores(off)
    verdict, _ = run(off, "d-off", restores, Clock())

    assert verdict["status"] == "not_ready" and verdict["auto_rollback"] is False
    assert restores.calls == [] and Journal(off.backup_dir).all() == []
    assert "Automatic rollback is OFF" in webhook.texts()[0] and SNAP_PRE in webhook.texts()[0]
    assert "action=alert_only" in log_lines(off)[-1]


def test_a_briefly_busy_service_is_asked_again(cs, readyz):
    readyz.set("fail")
    restores = Restores(cs, refuse=[LockHeld("refused: prune in progress", {"kind": "prune"})])
    clock = Clock()
    while len(restores.calls) < 2:
        out = canary.tick(cs, "d-busy", None, "r", restores, now=clock)
        assert out.verdict is None, out.message
        clock.t += out.wait
    assert canary.load_record(cs, "d-busy")["phase"] == "restoring"


def test_another_restore_in_progress_is_not_waited_for(cs, readyz, webhook):
    readyz.set("fail")
    ServiceLock(cs.backup_dir).claim({"kind": "restore", "txn": "txn-20260101T000000Z-999999"})
    restores = Restores(cs, refuse=[LockHeld("refused: restore txn-20260101T000000Z-999999 in progress")])
    verdict, _ = run(cs, "d-locked", restores, Clock())
    assert verdict["status"] == "not_ready" and "could not start" in verdict["message"]
    assert "could not start" in webhook.texts()[-1]


def test_a_second_canary_of_a_watched_deploy_defers_to_the_first(cs):
    first = canary.tick(cs, "d-dup", None, "run-a", Restores(cs), now=Clock())
    assert first.verdict is None
    second = canary.tick(cs, "d-dup", None, "run-b", Restores(cs), now=Clock())
    assert second.verdict["status"] == "duplicate" and second.verdict["watched_by"] == "run-a"


def test_a_named_snapshot_is_restored(cs, readyz):
    readyz.set("fail")
    restores, clock = Restores(cs), Clock()
    while not restores.calls:
        clock.t += canary.tick(cs, "d-named", SNAP_OLD, "r", restores, now=clock).wait or 0
    assert restores.calls == [SNAP_OLD]


def test_the_snapshot_before_the_deploy():
    entries = [entry(SNAP_OLD, "2026-01-01T00:00:00Z", notes="deploy x id=d7"),
               entry(SNAP_PRE, "2026-01-01T00:01:00Z"), entry("20260101T000300Z-000003", "2026-01-01T00:03:00Z")]
    assert canary.snapshot_before_deploy(entries, "d7", "2026-01-01T00:02:00Z")["id"] == SNAP_OLD  # tagged
    assert canary.snapshot_before_deploy(entries, "d8", "2026-01-01T00:02:00Z")["id"] == SNAP_PRE  # newest before
    with pytest.raises(SnapshotNotFound, match="no snapshot taken before deploy d9"):
        canary.snapshot_before_deploy(entries, "d9", "2025-12-31T00:00:00Z")


@pytest.mark.parametrize("bad", ["", "../etc", ".hidden", "a b", "x" * 200, None])
def test_deploy_ids_are_validated(bad):
    with pytest.raises(RollbackError, match="invalid deploy id") as info:
        canary.validate_deploy_id(bad)
    assert exit_code_for(info.value) == 2


def test_an_unreachable_webhook_is_logged_not_raised(cs):
    dead = cs.with_overrides(notify_webhook_url="http://127.0.0.1:9/hooks/SECRET")
    assert notify.send_alert(dead, "hello") is False
    line = dead.rollback_log.read_text().splitlines()[-1]
    assert "notify status=failed host=127.0.0.1:9" in line and "SECRET" not in line
    assert notify.send_alert(cs.with_overrides(notify_webhook_url=None), "hello") is False
