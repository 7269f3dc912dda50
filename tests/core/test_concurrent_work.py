"""Work done at the same time: the snapshot's dump and archive (proc.run_both) and the cold restore's
extraction during the db step."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from rollback import restore as core
from rollback.errors import CommandFailed, StepFailed
from rollback.journal import Journal
from rollback.manifest import Manifest
from rollback.proc import Cancelled, run_both, stream
from rollback.resources import data_tree
from rollback.snapshot import create_snapshot
from tests import state


def _endless(check) -> None:
    """A child that would run for ever; `check` from its progress callback stops it."""
    stream(["sh", "-c", "while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done"], stdout=lambda _chunk: None,
           progress=lambda _n: check())


def _fails(_check) -> None:
    time.sleep(0.2)
    stream(["sh", "-c", "echo 'pg_dump: error: connection refused' >&2; exit 3"])


@pytest.mark.parametrize("failing_side", ["thread", "caller"])
def test_run_both_a_failure_stops_the_other_half_and_is_the_error_raised(failing_side):
    first, second = (_fails, _endless) if failing_side == "thread" else (_endless, _fails)
    t0 = time.monotonic()
    with pytest.raises(CommandFailed, match="connection refused"):  # not the Cancelled it caused
        run_both(first, second)
    assert time.monotonic() - t0 < 10
    leftovers = subprocess.run(["pgrep", "-f", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "-P", str(os.getpid())],
                               capture_output=True, text=True).stdout.split()
    assert leftovers == []  # the sibling's child was killed and reaped before run_both returned


def test_run_both_returns_both_results():
    assert run_both(lambda check: (check(), "dump")[1], lambda check: (check(), "archive")[1]) == ("dump", "archive")


def test_run_both_an_interrupt_in_the_caller_stops_the_thread():
    def interrupted(_check):
        time.sleep(0.2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_both(_endless, interrupted)
    with pytest.raises(Cancelled):  # the thread's half saw the stop (and its child was killed)
        run_both(_endless, lambda check: (time.sleep(0.2), _raise_cancelled(check)))


def _raise_cancelled(check):
    raise Cancelled("stopped by hand")


def test_snapshot_refuses_an_unrestorable_tree(settings):
    (settings.data_base_dir / "uploads").mkdir(exist_ok=True)
    os.mkfifo(settings.data_base_dir / "uploads" / "pipe")
    with pytest.raises(Exception, match="a restore would refuse"):
        create_snapshot(settings)
    assert Manifest(settings.backup_dir).entries() == []
    assert [p.name for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")] == []


def _staging_paths(settings) -> list:
    return [p for p in settings.data_base_dir.parent.iterdir() if "rollback-stage-" in p.name]


def test_cold_restore_extracts_the_data_during_the_db_step(settings):
    before = state.capture(settings)
    snap = create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    broken = state.capture(settings)
    doc = core.begin_restore(settings, snap["id"], reason="concurrent")
    txn = doc["txn"]
    core.run_step(settings, txn, "preflight", doc["attempt"])
    core.run_step(settings, txn, "db", doc["attempt"])
    journal = Journal(settings.backup_dir).load(txn)
    assert journal["marks"]["data_phase"] == "extracted" and journal["marks"]["data_prestaged"] is True
    assert "data archive extracted into staging meanwhile" in journal["steps"]["db"]["detail"]
    staging, _pre = data_tree.layout(settings.data_base_dir, txn, mounted=False)
    assert (staging / "users.json").read_bytes() != (settings.data_base_dir / "users.json").read_bytes()
    assert state.tree(settings.data_base_dir) == broken["tree"]  # the live tree is untouched until the data step
    final = core.run_remaining(settings, txn)
    assert final["status"] == "succeeded"
    assert "extracted during the db step" in final["steps"]["data"]["detail"]
    assert state.capture(settings) == before
    assert _staging_paths(settings) == []


def test_a_failed_db_step_removes_what_was_extracted_meanwhile(settings):
    snap = create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    broken = state.capture(settings)
    Manifest(settings.backup_dir).update(snap["id"], alembic_revision="0001_users")  # the restored db is refused
    doc = core.begin_restore(settings, snap["id"], reason="db fails")
    core.run_step(settings, doc["txn"], "preflight", doc["attempt"])
    with pytest.raises(StepFailed, match="live database was not touched"):
        core.run_step(settings, doc["txn"], "db", doc["attempt"])
    assert _staging_paths(settings) == []
    assert "data_phase" not in Journal(settings.backup_dir).load(doc["txn"])["marks"]
    assert state.capture(settings) == broken
