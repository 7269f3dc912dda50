"""The readyz step restarts the app (APP_RESTART_COMMAND) on the restored code before polling READYZ_URL;
a failed or hung restart fails the restore with db, data and code left restored; warnings and notes
reach the journal, the summary, the API status and the console pages."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from rollback.errors import StepFailed
from rollback.journal import Journal, is_success, success_status
from rollback.lock import ServiceLock
from rollback.restore import restore_summary, run_restore_local
from rollback.restore_steps import NOT_RESTARTED_NOTE, RENDER_NOTE, StepContext, restart_app
from rollback.snapshot import create_snapshot
from tests import state
from tests.status_server import StatusServer


class GateServer(StatusServer):
    """READYZ_URL of an app that answers 200 only once its restart has left `marker`."""

    def __init__(self, marker: Path):
        super().__init__(lambda: 200 if marker.exists() else 503)


def _iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _latest(settings) -> dict:
    return Journal(settings.backup_dir).all()[-1]


def test_restart_runs_once_after_the_code_step_and_before_readyz(settings, tmp_path):
    marker = tmp_path / "restarted"
    command = f'git rev-parse HEAD >> "{marker}"; echo "restarting microblog"; echo "db password=hunter2"'
    with GateServer(marker) as gate:
        s = settings.with_overrides(app_restart_command=command, readyz_url=gate.url)
        snap = create_snapshot(s)
        state.bad_deploy(s, s.app_repo_dir)

        doc = run_restore_local(s, "latest", reason="restart proof")

    assert doc["status"] == "succeeded", doc
    # Ran once, in APP_REPO_DIR, on the restored code (so after the code step) ...
    assert marker.read_text().split() == [snap["app_revision"]]
    assert marker.stat().st_mtime >= _iso(doc["steps"]["code"]["ended_at"])
    # ... and before READYZ_URL was polled: the gate was never asked before the marker existed.
    assert [code for _, code in gate.answers] == [200]
    mark = doc["marks"]["restart"]
    assert mark["exit"] == 0 and mark["timed_out"] is False and mark["duration_sec"] < 5
    assert "restarting microblog" in mark["output_tail"] and "password=***" in mark["output_tail"]
    assert "hunter2" not in str(mark)
    log = s.rollback_log.read_text()
    assert re.search(rf"ROLLBACK id={doc['txn']} step=restart status=ok exit=0 duration_sec=\S+ command=", log)
    assert "restarting microblog" in log and "hunter2" not in log
    summary = restore_summary(doc)
    assert summary["warnings"] == []
    assert any("restarted by APP_RESTART_COMMAND" in n for n in summary["notes"])
    assert NOT_RESTARTED_NOTE not in summary["notes"]


def test_a_ready_app_is_seen_within_a_fraction_of_a_second(settings, tmp_path):
    """The restart leaves the app starting in the background (holding the command's output); it is
    ready 0.5 s later. With 5 s between probes, the step still sees it well before 5 s."""
    marker = tmp_path / "app-up"
    command = f'(sleep 0.5; echo "app listening"; touch "{marker}") & echo "started in the background"'
    with GateServer(marker) as gate:
        s = settings.with_overrides(app_restart_command=command, readyz_url=gate.url, ready_interval_sec=5.0)
        create_snapshot(s)
        doc = run_restore_local(s, "latest", reason="fast readiness")

    assert doc["status"] == "succeeded", doc
    assert doc["marks"]["restart"]["duration_sec"] < 0.5  # did not wait for the background app
    assert doc["steps"]["readyz"]["duration_sec"] < 2.0
    assert [code for _, code in gate.answers][-1] == 200 and len(gate.answers) >= 2
    assert "app listening" in (s.log_dir / "app-restart.log").read_text()


def test_failing_restart_fails_the_restore_with_everything_restored(settings):
    s = settings.with_overrides(app_restart_command='echo "cannot restart: token=s3cret" >&2; exit 3')
    before = state.capture(s)
    create_snapshot(s)
    state.bad_deploy(s, s.app_repo_dir)

    with pytest.raises(StepFailed) as info:
        run_restore_local(s, "latest", reason="restart fails")

    doc = _latest(s)
    assert doc["status"] == "failed" and not is_success(doc["status"])
    assert [doc["steps"][k]["status"] for k in ("preflight", "db", "data", "code", "readyz")] == \
        ["ok", "ok", "ok", "ok", "failed"]
    assert "the app restart command failed (exit 3: cannot restart: token=***)" in doc["error"]
    assert "database, data and code ARE restored — restart the app by hand, then check READYZ_URL" in doc["error"]
    assert "restart the app by hand" in str(info.value)
    after = state.capture(s)
    assert after == before  # nothing was undone
    assert ServiceLock(s.backup_dir).active() is None
    log = s.rollback_log.read_text()
    assert f"ROLLBACK id={doc['txn']} step=restart status=failed exit=3" in log
    assert "s3cret" not in log and "s3cret" not in str(doc)


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_restart_past_its_timeout_is_killed_with_its_group(settings, tmp_path):
    pidfile = tmp_path / "child.pid"
    s = settings.with_overrides(app_restart_timeout_sec=1.0,
                                app_restart_command=f'sleep 60 & echo $! > "{pidfile}"; echo "waiting"; sleep 60')
    create_snapshot(s)
    t0 = time.monotonic()

    with pytest.raises(StepFailed):
        run_restore_local(s, "latest", reason="restart hangs")

    assert time.monotonic() - t0 < 20
    doc = _latest(s)
    assert doc["status"] == "failed"
    assert "the app restart command failed (did not finish within 1 s and was killed: waiting)" in doc["error"]
    assert doc["marks"]["restart"]["timed_out"] is True and doc["marks"]["restart"]["exit"] is None
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the restart command's background child survived the timeout"
    assert f"ROLLBACK id={doc['txn']} step=restart status=failed exit=timeout" in s.rollback_log.read_text()


def test_without_restart_command_the_summary_notes_it(settings):
    create_snapshot(settings)
    doc = run_restore_local(settings, "latest", reason="no restart command")
    summary = restore_summary(doc)
    assert summary["status"] == "succeeded"
    assert summary["warnings"] == [] and summary["notes"] == [NOT_RESTARTED_NOTE]
    assert "restart" not in doc["marks"]


def test_render_strategy_runs_no_restart_command(settings, tmp_path):
    marker = tmp_path / "restarted"
    s = settings.with_overrides(code_rollback_strategy="render", app_restart_command=f'touch "{marker}"')
    journal = Journal(s.backup_dir)
    txn = "txn-20260101T000000Z-abcdef"
    journal.create(txn, snapshot_id="x", reason="render")
    ctx = StepContext(s, txn, "readyz", {}, journal)

    assert restart_app(ctx) == "restarted by the Render rollback deploy"
    assert not marker.exists()
    assert journal.load(txn)["notes"] == [RENDER_NOTE]


def test_warnings_make_a_degraded_success_everywhere(settings, tmp_path):
    """Journal → summary → API status → console progress and history pages, in yellow."""
    from rollback.journal import RESTORE_STEPS
    from web import create_app
    from web.config import WebConfig
    from web.progress import history, restore_status

    journal = Journal(settings.backup_dir)
    txn = "txn-20260102T000000Z-abcdef"
    journal.create(txn, snapshot_id="20260102T000000Z-000000", reason="warned")
    for step in RESTORE_STEPS:
        journal.step_started(txn, step)
        journal.step_finished(txn, step, "ok", detail="done")
    warning = "database restored from a clean slate instead of alembic downgrade: test"
    journal.add_warning(txn, warning)
    journal.add_warning(txn, warning)  # a re-run says it again: kept once
    journal.add_note(txn, "informational line")
    assert success_status(journal.load(txn)) == "succeeded_with_warnings"
    journal.finish(txn, success_status(journal.load(txn)))

    status = restore_status(settings, txn)
    assert status["status"] == "succeeded_with_warnings" and status["final"] and status["success"]
    assert status["percent"] == 100 and status["warnings"] == [warning] and status["notes"] == ["informational line"]
    assert history(settings)[0]["warnings"] == [warning]

    password = "correct horse battery staple"
    app = create_app(settings, WebConfig.from_env({
        "ROLLBACK_ADMIN_USER": "ops", "ROLLBACK_ADMIN_PASSWORD": password, "SECRET_KEY": "k" * 32,
        "ROLLBACK_LOGIN_FAILURE_DELAY_SEC": "0", "ROLLBACK_COOKIE_SECURE": "false"}))
    client = app.test_client()
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"',
                      client.get("/admin/rollback/login").text).group(1)
    resp = client.post("/admin/rollback/login", data={"csrf_token": token, "username": "ops", "password": password})
    assert resp.status_code == 302
    page = client.get(f"/admin/rollback/restore/{txn}").text
    assert 'class="alert alert-warning"' in page and "succeeded WITH WARNINGS" in page and warning in page
    assert "alert-success" not in page and "bg-success" not in page
    hist = client.get("/admin/rollback/history/").text
    row = re.search(rf'<tr data-txn="{txn}">.*?</tr>', hist, re.S).group(0)
    assert "badge-warning" in row and "succeeded_with_warnings" in row and warning in row
    assert "badge-success" not in row
