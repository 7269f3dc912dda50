"""Item 6: Postgres stops before, during and after `pg_restore`. The server is the session's private one
(`private_postgres`: everything of these tests lives on it), stopped with `pg_ctl stop -m fast` (what
`pg_ctlcluster ... stop` does) and always started again in a finally block.

- before: the db step cannot connect; it fails, nothing after it runs, the live database is untouched;
- during (swap, the default): pg_restore into `<db>__new_<txn>` dies with the server; the live database
  is untouched; during (in-place): the undo waits for the server to come back and puts the live
  database back from its copy; when the server stays down longer, the db step is `interrupted`, the
  transaction keeps the service, and the resume starts from the copy;
- after: the db step is done, the server stops during the data step and comes back; the restore
  finishes by itself (the readyz step waits for the app to be ready again).
In every case `resume` (or the restore itself) ends with the snapshot's state and the previous state kept.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from rollback import restore as core
from rollback.errors import StepFailed
from rollback.journal import Journal
from rollback.lock import ServiceLock
from tests import state
from tests.faults import figures as F
from tests.faults.conftest import COMPONENTS, build_scenario, journal_doc, previous_state_lost, wait_until
from tests.faults.on_private_servers import celery_app, database_name, env, redis_db  # noqa: F401


def _grow_database(settings, rows: int) -> None:
    """A table big enough that pg_restore takes a noticeable time."""
    with state.connect(settings) as conn:
        conn.execute("create table if not exists bulk (id bigserial primary key, payload text)")
        conn.execute("insert into bulk (payload) select md5(g::text) || repeat('x', 200) from generate_series(1, %s) g",
                     (rows,))


def _pg_restore_running(dbname: str, strategy: str) -> bool:
    """Our restore's pg_restore runs (other sessions on this machine may run theirs): swap restores into
    `<db>__new_<txn>`, in-place runs `--clean` on `<db>` itself."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"pg_restore"):
            continue
        if strategy == "swap" and any(a.startswith(f"{dbname}__new_".encode()) for a in argv):
            return True
        if strategy == "in-place" and b"--clean" in argv and dbname.encode() in argv:
            return True
    return False


def _finish(scenario, txn: str) -> str:
    """An operator's resume once the server is back; returns how it ended."""
    doc = journal_doc(scenario.settings, txn)
    if doc["status"] == "succeeded":
        return "finished by itself"
    core.resume(scenario.settings, txn)
    final = core.run_remaining(scenario.settings, txn)
    return "resumed" if final["status"] == "succeeded" else f"NOT FINISHED {final['status']}"


def _check_final(scenario, txn: str, case, outcome: str) -> None:
    whole = scenario.classify() == dict.fromkeys(COMPONENTS, "good")
    lost = previous_state_lost(scenario.settings, txn, scenario.states[scenario.bad["id"]])
    case.run(outcome if whole else f"{outcome}; NOT WHOLE", data_lost=lost)
    assert whole and lost == 0, outcome
    assert ServiceLock(scenario.settings.backup_dir).active() is None


@pytest.fixture
def outage_scenario(settings):
    _grow_database(settings, 100_000)
    return build_scenario(settings)


def _runs(scenario, figures, name: str, reason: str):
    """Each run of a case: from the bad deploy's state, a restore of `good` admitted; yields (case, journal)."""
    case = figures.case(6, name)
    for _ in range(F.runs(1, 3)):
        case.begin()
        scenario.reset_to_bad()
        yield case, core.begin_restore(scenario.settings, scenario.good["id"], reason=reason)


def test_postgres_down_before_pg_restore(outage_scenario, figures, private_postgres):
    scenario, settings = outage_scenario, outage_scenario.settings
    for case, doc in _runs(scenario, figures, "Postgres down before pg_restore (db step)", "pg down before"):
        core.run_step(settings, doc["txn"], "preflight", doc["attempt"])  # needs no server
        with private_postgres.down():
            with pytest.raises(StepFailed) as failed:
                core.run_step(settings, doc["txn"], "db", doc["attempt"])
            # Later steps never run on an unfinished db step.
            assert core.run_step(settings, doc["txn"], "data", doc["attempt"])["status"] == "skipped"
        steps = Journal(settings.backup_dir).load(doc["txn"])["steps"]
        assert steps["db"]["status"] == "failed" and {steps[s]["status"] for s in ("data", "code", "readyz")} == {"pending"}
        assert scenario.classify() == dict.fromkeys(COMPONENTS, "bad"), str(failed.value)  # untouched
        _check_final(scenario, doc["txn"], case, f"db step refused, live untouched, {_finish(scenario, doc['txn'])}")


@pytest.mark.parametrize("strategy", ["swap", "in-place"])
def test_postgres_down_during_pg_restore(strategy, outage_scenario, figures, private_postgres):
    """The server is restarted (down a few seconds) while pg_restore runs: the step fails cleanly, the live
    database is the one from before the step (in-place: its undo waits for the server), resume finishes."""
    scenario = outage_scenario
    settings = scenario.settings = outage_scenario.settings.with_overrides(db_restore_strategy=strategy)
    for case, doc in _runs(scenario, figures, f"Postgres restarted during pg_restore ({strategy})",
                           f"pg down during ({strategy})"):
        txn = doc["txn"]
        runner, errors = _start_and_stop_during_pg_restore(private_postgres, settings, txn, strategy)
        try:
            time.sleep(3.0)
        finally:
            private_postgres.ensure_up()
            runner.join(180)
        assert not runner.is_alive()
        steps = Journal(settings.backup_dir).load(txn)["steps"]
        assert steps["db"]["status"] == "failed", (steps["db"], errors)
        assert {steps[s]["status"] for s in ("data", "code", "readyz")} == {"pending"}
        live_db = scenario.classify()["db"]
        how = _finish(scenario, txn)
        _check_final(scenario, txn, case, f"db step failed (live db {live_db}), {how}")
        assert live_db == "bad", live_db  # untouched (or put back) before the resume


def test_postgres_down_longer_than_the_in_place_undo_waits(outage_scenario, figures, monkeypatch, private_postgres):
    """In-place, the server stays down past the undo's wait: the db step is `interrupted`, the transaction
    stays open and keeps the service (nothing runs on the half-restored database); resume puts it right."""
    from rollback.resources import database as db_step

    monkeypatch.setattr(db_step, "UNDO_RETRY_SEC", 2.0)
    scenario = outage_scenario
    settings = scenario.settings = outage_scenario.settings.with_overrides(db_restore_strategy="in-place")
    for case, doc in _runs(scenario, figures, "Postgres down past the in-place undo window",
                           "pg down long (in-place)"):
        txn = doc["txn"]
        runner, errors = _start_and_stop_during_pg_restore(private_postgres, settings, txn, "in-place")
        try:
            runner.join(180)
            assert not runner.is_alive()
            journal = Journal(settings.backup_dir).load(txn)
            assert journal["steps"]["db"]["status"] == "interrupted", (journal["steps"]["db"], errors)
            assert journal["status"] not in ("succeeded", "failed")
            assert ServiceLock(settings.backup_dir).active()["txn"] == txn  # still owns the service
            assert "resume" in str(errors[0]), errors
        finally:
            private_postgres.ensure_up()
        with pytest.raises(Exception):  # a second restore is refused while this one is open
            core.begin_restore(settings, scenario.good["id"], reason="while interrupted")
        how = _finish(scenario, txn)
        _check_final(scenario, txn, case, f"db step interrupted, service kept, {how}")


def _start_and_stop_during_pg_restore(server, settings, txn: str, strategy: str):
    """Run the rest of `txn` in the background and stop the server once its pg_restore runs."""
    dbname = settings.database.dbname
    runner, errors = _in_background(settings, txn)
    try:
        wait_until(lambda: _pg_restore_running(dbname, strategy) or not runner.is_alive(), 120, 0.005, "pg_restore")
        assert runner.is_alive(), f"the restore ended before pg_restore could be interrupted: {errors}"
        server.stop()
    except BaseException:
        server.ensure_up()
        runner.join(180)
        raise
    return runner, errors


def _in_background(settings, txn: str) -> tuple[threading.Thread, list[BaseException]]:
    """Run the rest of `txn` in a thread (as --local would); its exception, if any, lands in the list."""
    errors: list[BaseException] = []

    def run():
        try:
            core.run_remaining(settings, txn)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    return runner, errors


def test_postgres_down_after_pg_restore(outage_scenario, figures, private_postgres):
    scenario, settings = outage_scenario, outage_scenario.settings
    for case, doc in _runs(scenario, figures, "Postgres down after pg_restore (during the data step)",
                           "pg down after"):
        txn = doc["txn"]
        runner, errors = _in_background(settings, txn)
        try:
            wait_until(lambda: (d := journal_doc(settings, txn))["steps"]["db"]["status"] == "ok" or
                       d["status"] in ("succeeded", "failed"), 120, 0.002, "the db step")
            with private_postgres.down():
                time.sleep(1.0)
        finally:
            private_postgres.ensure_up()
            runner.join(120)
        how = _finish(scenario, txn)
        if errors:
            case.note(f"the restore stopped: {errors[0]}")
        _check_final(scenario, txn, case, how)
