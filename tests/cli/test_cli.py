"""The operator CLI as a child process: exit codes, one-line errors, --local and a real worker process."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from rollback.restore import begin_restore
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import ROOT, cli


def _one_line_error(result):
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_local_snapshot_list_show_verify_restore(live_env, settings):
    before = state.capture(settings)
    made = cli(live_env, "snapshot", "--notes", "cli test", "--local", "--json")
    assert made.returncode == 0, made.stderr
    entry = json.loads(made.stdout)
    assert entry["notes"] == "cli test"

    listed = json.loads(cli(live_env, "list", "--json").stdout)
    assert [e["id"] for e in listed] == [entry["id"]]
    assert entry["id"] in cli(live_env, "list").stdout
    assert json.loads(cli(live_env, "show", entry["id"], "--json").stdout)["id"] == entry["id"]
    verified = cli(live_env, "verify", entry["id"])
    assert verified.returncode == 0 and "sha256 ok" in verified.stdout

    state.bad_deploy(settings, settings.app_repo_dir)
    restored = cli(live_env, "restore", "--snapshot", entry["id"], "--reason", "cli", "--yes", "--local")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "SUCCEEDED" in restored.stdout
    for step in ("preflight", "db", "data", "code", "readyz"):
        assert f"[{step:<9}]" in restored.stderr  # a progress line per step
    assert state.capture(settings) == before


def test_through_a_real_worker_process(live_env, settings, worker_process):
    worker_process()
    before = state.capture(settings)
    made = subprocess.run(["bash", "scripts/backup_all.sh", "--notes", "deploy test", "--json"], cwd=ROOT,
                          env=dict(os.environ, **live_env), capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    snapshot_id = json.loads(made.stdout)["id"]
    state.bad_deploy(settings, settings.app_repo_dir)

    restored = subprocess.run(["bash", "scripts/restore_all.sh", "--snapshot", snapshot_id, "--reason", "e2e"],
                              cwd=ROOT, env=dict(os.environ, **live_env), capture_output=True, text=True,
                              timeout=300)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "SUCCEEDED" in restored.stdout
    assert state.capture(settings) == before
    status = json.loads(cli(live_env, "status", "--json").stdout)
    assert status["status"] == "succeeded" and status["reason"] == "e2e"


@pytest.mark.parametrize("args, needle", [
    (["show", "../../etc/passwd"], "invalid snapshot id"),
    (["restore", "--snapshot", "20260101T000000Z-zzzzzz", "--reason", "x", "--yes", "--local"], "invalid snapshot id"),
    (["restore", "--snapshot", "20260101T000000Z-abcdef", "--reason", "x", "--yes", "--local"], "not found"),
    (["verify", "latest"], "no snapshot recorded"),
])
def test_bad_input_is_exit_2_and_one_line(live_env, settings, args, needle):
    result = cli(live_env, *args)
    assert result.returncode == 2
    assert needle in _one_line_error(result)


def test_invalid_setting_names_the_variable(live_env):
    for name, value in (("DATABASE_URL", "mysql://x/y"), ("BACKUP_RETENTION", "zero"),
                        ("ROLLBACK_READY_TIMEOUT_SEC", "-1")):
        result = cli(dict(live_env, **{name: value}), "list")
        assert result.returncode == 2
        assert _one_line_error(result).startswith(f"error: {name}:")


def test_restore_needs_confirmation_without_a_terminal(live_env, settings):
    create_snapshot(settings)
    result = cli(live_env, "restore", "--snapshot", "latest", "--reason", "x", "--local")
    assert result.returncode == 2 and "--yes" in _one_line_error(result)


def test_missing_dump_is_a_clear_failure(live_env, settings):
    snap = create_snapshot(settings)
    (settings.backup_dir / snap["id"] / "db.dump").unlink()
    result = cli(live_env, "restore", "--snapshot", snap["id"], "--reason", "x", "--yes", "--local")
    assert result.returncode == 1
    assert "db artifact" in result.stdout and "missing" in result.stdout
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_line(live_env, settings):
    result = cli(dict(live_env, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere"), "snapshot", "--local")
    assert result.returncode == 1
    assert "unreachable" in _one_line_error(result)


def test_concurrent_restore_is_exit_3(live_env, settings):
    create_snapshot(settings)
    first = begin_restore(settings, "latest", reason="holder")
    result = cli(live_env, "restore", "--snapshot", "latest", "--reason", "second", "--yes", "--local")
    assert result.returncode == 3
    assert f"restore {first['txn']} in progress" in _one_line_error(result)
    snap = cli(live_env, "snapshot", "--local")
    assert snap.returncode == 3


def test_broker_down_suggests_local(live_env, settings):
    create_snapshot(settings)
    down = dict(live_env, CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_RESULT_BACKEND="redis://127.0.0.1:1/0")
    result = cli(down, "restore", "--snapshot", "latest", "--reason", "x", "--yes", timeout=120)
    assert result.returncode == 1
    assert "--local" in _one_line_error(result)
    # Nothing was claimed: a local restore right after is admitted.
    assert begin_restore(settings, "latest", reason="after broker failure")["status"] == "pending"
