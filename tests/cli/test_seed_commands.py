"""The commands of the original runbook, exactly as it writes them."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import pytest

from rollback import manager
from rollback.errors import SnapshotNotFound
from rollback.journal import Journal
from rollback.manifest import Manifest
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import ROOT, cli


def operator_env(env: dict) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "BACKUP_", "DATA_BASE"))}
    return dict(base, **env)


def test_backup_all_with_the_runbook_notes(live_env, settings, worker_process):
    worker_process()
    done = subprocess.run(["bash", "-c", 'scripts/backup_all.sh --notes "deploy $(date -u +%Y%m%dT%H%M%SZ)"'],
                          cwd=ROOT, env=operator_env(live_env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    entries = Manifest(settings.backup_dir).entries()
    assert len(entries) == 1 and re.fullmatch(r"deploy \d{8}T\d{6}Z", entries[0]["notes"]), entries
    assert f"snapshot {entries[0]['id']} complete" in done.stdout


def test_canary_without_arguments_probes_readyz_here(live_env, settings):
    """No worker runs in this test: the probe happens in the CLI's own process, and nothing is restored."""
    ready = cli(live_env, "canary")
    assert ready.returncode == 0, ready.stderr
    assert re.match(r"readyz http://127\.0\.0\.1:\d+/readyz: HTTP 200: READY \(\d+ ms\)", ready.stdout)
    assert re.search(r"^  ok    users_file +users\.json: valid JSON", ready.stdout, re.M)

    (settings.data_base_dir / "users.json").write_text("not json")
    not_ready = cli(live_env, "canary")
    assert not_ready.returncode == 1, not_ready.stderr
    assert ": HTTP 503: NOT READY" in not_ready.stdout.splitlines()[0]
    assert re.search(r"^  FAIL  users_file ", not_ready.stdout, re.M)
    assert re.search(r"^  ok    database ", not_ready.stdout, re.M)

    as_json = json.loads(cli(live_env, "canary", "--json").stdout)
    assert as_json["status"] == "not_ready" and as_json["http_status"] == 503
    assert as_json["checks"]["users_file"]["ok"] is False

    down = cli(dict(live_env, READYZ_URL="http://127.0.0.1:9/readyz"), "canary")
    assert down.returncode == 1 and "unreachable" in down.stdout and "Traceback" not in down.stderr
    assert Journal(settings.backup_dir).all() == []  # a probe never restores


def test_canary_no_wait_needs_a_deploy(live_env, settings):
    done = cli(live_env, "canary", "--no-wait")
    assert done.returncode == 2 and "--deploy-id or --snapshot" in done.stderr


def run_on_a_terminal(env: dict, *args: str, answer: str) -> subprocess.CompletedProcess:
    """Run the CLI with a terminal as stdin (so it asks for confirmation) and type `answer`."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "manage.rollback", *args], cwd=ROOT, env=operator_env(env),
                                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(terminal)
        os.write(controller, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(controller)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_restore_by_id_with_reason_manual_and_latest(live_env, settings, worker_process):
    worker_process()
    before = state.capture(settings)
    snap = create_snapshot(settings, notes="before deploy")
    state.bad_deploy(settings, settings.app_repo_dir)

    done = run_on_a_terminal(live_env, "restore", "--snapshot", snap["id"], "--reason", "manual", answer="restore")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Restore snapshot {snap['id']}" in done.stderr and "SUCCEEDED" in done.stdout
    assert state.capture(settings) == before
    assert Journal(settings.backup_dir).all()[-1]["reason"] == "manual"

    cancelled = run_on_a_terminal(live_env, "restore", "--snapshot", "latest", "--reason", "manual", answer="no")
    assert cancelled.returncode == 2 and "restore cancelled" in cancelled.stderr
    assert len(Journal(settings.backup_dir).all()) == 1

    latest = cli(live_env, "restore", "--snapshot", "latest", "--reason", "manual", "--yes")
    assert latest.returncode == 0, latest.stdout + latest.stderr
    assert f"of {snap['id']}: SUCCEEDED" in latest.stdout


def test_manager_restore_latest_backup(env, settings):
    with pytest.raises(SnapshotNotFound, match="no snapshot recorded"):
        manager.restore_latest_backup(reason="readyz_fail", auto=True, settings=settings)
    before = state.capture(settings)
    create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)

    doc = manager.restore_latest_backup(reason="readyz_fail", auto=True, settings=settings)
    assert doc["status"] == "succeeded" and doc["auto"] is True and doc["requested_by"] == "manager"
    assert state.capture(settings) == before
    log = settings.rollback_log.read_text()
    assert f"ROLLBACK id={doc['txn']} step=restore status=queued" in log and "by=manager" in log
    audits = [line for line in log.splitlines() if " AUDIT " in line]
    assert "action=restore outcome=failed" in audits[0] and "no snapshot recorded" in audits[0]
    assert f"action=restore outcome=ok reason=readyz_fail auto=true by=manager txn={doc['txn']}" in audits[1]
