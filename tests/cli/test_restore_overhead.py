"""The CLI's own overhead around a restore through a real worker process: the worker check answers
on the first reply, a refused preflight answers at once, and a warm restore leaves the hashing of the
artifacts it did not read to a background task that records (and alerts on) what it finds.

Wall times are printed (`pytest -s`), never asserted."""

from __future__ import annotations

import os
import time

import pytest

from rollback.manifest import Manifest
from rollback.snapshot import create_snapshot
from rollback.standby import prepare_standby
from tests import state
from tests.canary.fixtures import webhook  # noqa: F401 (a fixture)
from tests.conftest import ROOT, cli

BACKGROUND_DEADLINE_SEC = 120


@pytest.fixture
def live_env(env, settings, webhook):
    """tests/conftest.py's, with alerts going to a recording webhook (the worker reads this env)."""
    return dict(env, READYZ_URL=settings.readyz_url, ROLLBACK_NOTIFY_WEBHOOK_URL=webhook.url)


def _restore(live_env: dict, snapshot_id: str, label: str):
    started = time.monotonic()
    result = cli(live_env, "restore", "--snapshot", snapshot_id, "--reason", label, "--yes")
    print(f"\n{label}: CLI wall {time.monotonic() - started:.2f} s, exit {result.returncode}\n{result.stdout}")
    return result


def _verified(settings, snapshot_id: str) -> dict | None:
    return Manifest.for_settings(settings).resolve(snapshot_id).get("verified")


def _wait_for_verified(settings, snapshot_id: str, before: dict | None) -> dict:
    """The verification recorded after `before` (the record the standby's preparation left)."""
    deadline = time.monotonic() + BACKGROUND_DEADLINE_SEC
    while time.monotonic() < deadline:
        verified = _verified(settings, snapshot_id)
        if verified and verified != before:
            return verified
        time.sleep(0.1)
    pytest.fail(f"the background verification of {snapshot_id} recorded nothing in the manifest")


def _flip_a_byte(path, offset_fraction: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(raw))  # same size: only the hash can tell


def test_the_worker_check_returns_on_the_first_reply(live_env, worker_process):
    from manage.follow import require_worker as _require_worker
    from tasks import app

    worker_process("w1")
    worker_process("w2")
    assert len(app.control.ping(timeout=1.0)) == 2  # both answer: a broadcast waits for every reply
    assert len(_require_worker()) == 1  # so one reply means it stopped at the first, without the timeout


def test_warm_restore_through_the_worker_then_verified_in_background(live_env, settings, worker_process, webhook):
    worker_process()
    before = state.capture(settings)
    snap = create_snapshot(settings)
    prepare_standby(settings, snap["id"])
    state.bad_deploy(settings, settings.app_repo_dir)
    prepared = _verified(settings, snap["id"])

    result = _restore(live_env, snap["id"], "warm restore")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCEEDED" in result.stdout
    assert "artifacts not read" in result.stdout and "warm standby" in result.stdout
    for step in ("preflight", "db", "data", "code", "readyz"):
        assert f"  {step:<9} ok" in result.stdout
    assert state.capture(settings) == before
    verified = _wait_for_verified(settings, snap["id"], prepared)
    assert verified["ok"] is True, verified
    log = settings.rollback_log.read_text()
    assert "verify" in log and "mismatch" not in log
    assert webhook.texts() == []


def test_background_check_alerts_on_a_dump_corrupted_after_the_standby(live_env, settings, worker_process, webhook):
    worker_process()
    before = state.capture(settings)
    snap = create_snapshot(settings)
    prepare_standby(settings, snap["id"])
    _flip_a_byte(settings.backup_dir / snap["id"] / snap["artifacts"]["db"]["file"])
    state.bad_deploy(settings, settings.app_repo_dir)
    prepared = _verified(settings, snap["id"])

    result = _restore(live_env, snap["id"], "warm restore, corrupt dump")

    assert result.returncode == 0, result.stdout + result.stderr  # the standby, not the dump, was restored
    assert "SUCCEEDED" in result.stdout
    assert state.capture(settings) == before
    verified = _wait_for_verified(settings, snap["id"], prepared)
    assert verified["ok"] is False and "SHA-256 mismatch" in verified["error"], verified
    deadline = time.monotonic() + BACKGROUND_DEADLINE_SEC
    while not webhook.texts() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(snap["id"] in text and "no longer match" in text for text in webhook.texts()), webhook.texts()
    assert "mismatch" in settings.rollback_log.read_text()


def test_cold_preflight_refuses_a_corrupt_artifact_and_changes_nothing(live_env, settings, worker_process):
    worker_process()
    snap = create_snapshot(settings)  # no standby: the cold path hashes everything first
    _flip_a_byte(settings.backup_dir / snap["id"] / snap["artifacts"]["data"]["file"])
    before = state.capture(settings)

    result = _restore(live_env, snap["id"], "refused cold preflight")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "SHA-256 mismatch" in result.stdout
    assert state.capture(settings) == before


def test_warm_preflight_refuses_an_unknown_revision(live_env, settings, worker_process):
    worker_process()
    snap = create_snapshot(settings)
    prepare_standby(settings, snap["id"])
    Manifest.for_settings(settings).update(snap["id"], alembic_revision="0123456789ab")
    before = state.capture(settings)

    result = _restore(live_env, snap["id"], "refused warm preflight")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "unknown to the deployed code" in result.stdout
    assert state.capture(settings) == before


def test_local_warm_restore_verifies_after_reporting(live_env, settings, webhook):
    before = state.capture(settings)
    snap = create_snapshot(settings)
    prepare_standby(settings, snap["id"])
    _flip_a_byte(settings.backup_dir / snap["id"] / snap["artifacts"]["data"]["file"])
    state.bad_deploy(settings, settings.app_repo_dir)

    result = cli(live_env, "restore", "--snapshot", snap["id"], "--reason", "local warm", "--yes", "--local")

    assert result.returncode == 0, result.stdout + result.stderr  # the standby was restored, not the archive
    assert "SUCCEEDED" in result.stdout and "artifacts not read" in result.stdout
    assert "do not match the manifest" in result.stderr and "Traceback" not in result.stderr
    assert state.capture(settings) == before
    verified = Manifest.for_settings(settings).resolve(snap["id"])["verified"]
    assert verified["ok"] is False and "SHA-256 mismatch" in verified["error"]
    assert any(snap["id"] in text for text in webhook.texts()), webhook.texts()


def test_a_client_sending_a_restore_loads_neither_the_steps_nor_boto3(env):
    """What the CLI and the console import to admit and send a restore stays light; the worker loads the
    steps when it starts (celeryconfig.imports), so no restore's first step pays that import either."""
    import subprocess
    import sys

    import celeryconfig

    probe = ("import sys, tasks, manage.rollback, rollback.remote; "
             "print(sorted(m for m in ('rollback.restore_steps', 'boto3', 'psycopg') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "rollback.restore_steps" in celeryconfig.imports
