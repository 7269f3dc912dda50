"""The acceptance case: BACKUP_DIR wiped, `restore --snapshot latest` brings back db, data and code from
the bucket alone, verified — in this process (--local) and through a real worker (with client-side
encryption on), where the upload is the task chained after the snapshot."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time

import pytest

from rollback import remote
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import cli

KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def _wipe_and_break(settings) -> dict:
    """The state to come back to; then a bad deploy, and the backup disk lost."""
    before = state.capture(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    shutil.rmtree(settings.backup_dir)
    return before


def test_restore_local_after_backup_dir_wiped(remote_settings, remote_env):
    entry = create_snapshot(remote_settings, notes="good")
    remote.upload_snapshot(remote_settings, entry["id"])
    before = _wipe_and_break(remote_settings)
    env = dict(remote_env, READYZ_URL=remote_settings.readyz_url)
    started = time.monotonic()
    out = cli(env, "restore", "--snapshot", "latest", "--reason", "manual", "--yes", "--local", "--json")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    preflight = next(s for s in summary["steps"] if s["step"] == "preflight")
    assert "fetched from s3://" in preflight["detail"] and "sha256 ok" in preflight["detail"]
    assert "fetching" in out.stderr  # the progress said so
    assert state.capture(remote_settings) == before
    print(f"\nFIGURE disk gone, --local: restore from the bucket {took:.2f} s (CLI process included)")


def test_a_local_artifact_failing_sha256_is_replaced_by_the_remote_copy(remote_settings):
    entry = create_snapshot(remote_settings, notes="good")
    remote.upload_snapshot(remote_settings, entry["id"])
    before = state.capture(remote_settings)
    state.bad_deploy(remote_settings, remote_settings.app_repo_dir)
    data = remote_settings.backup_dir / entry["id"] / entry["artifacts"]["data"]["file"]
    raw = bytearray(data.read_bytes())
    raw[-40] ^= 0x01  # same size: only the SHA-256 can tell
    data.write_bytes(bytes(raw))
    remote_settings = remote_settings.with_overrides(standby_enabled=False)
    doc = run_restore_local(remote_settings, entry["id"], "corrupt local copy")
    assert doc["status"] == "succeeded", doc
    assert "local copy refused" in doc["steps"]["preflight"]["detail"]
    assert state.capture(remote_settings) == before


@pytest.fixture
def live_env(remote_env, settings):
    """The worker's environment: the bucket, and client-side encryption on."""
    return dict(remote_env, READYZ_URL=settings.readyz_url, BACKUP_ENCRYPTION_KEY=KEY)


def test_restore_through_the_worker_after_backup_dir_wiped(remote_settings, live_env, worker_process, redis_db, s3,
                                                           bucket):
    env = live_env
    worker_process()
    taken = cli(env, "snapshot", "--notes", "good", "--json")
    assert taken.returncode == 0, taken.stderr
    snapshot_id = json.loads(taken.stdout)["id"]
    deadline = time.monotonic() + 60
    while remote.read_state(remote_settings, snapshot_id)["state"] != "ok":
        assert time.monotonic() < deadline, remote.read_state(remote_settings, snapshot_id)
        time.sleep(0.2)
    upload_seconds = remote.read_state(remote_settings, snapshot_id)["seconds"]
    # The standby is on the lost disk too: wait until its preparation is over before wiping.
    time.sleep(1.0)
    before = _wipe_and_break(remote_settings)
    started = time.monotonic()
    out = cli(env, "restore", "--snapshot", "latest", "--reason", "manual", "--yes", "--json")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["snapshot_id"] == snapshot_id
    # The key went nowhere: not into the manifest, the logs, nor any Redis value (task results, progress).
    assert KEY not in (remote_settings.backup_dir / "manifest.json").read_text()
    assert KEY not in remote_settings.rollback_log.read_text()
    assert redis_db.keys("celery-task-meta-*")  # the task results are there to be searched
    for name in redis_db.keys("*"):
        assert KEY.encode() not in b"".join(_redis_values(redis_db, name)), name
    record = json.loads(s3.get_object(Bucket=bucket, Key=f"prod/snapshots/{snapshot_id}/snapshot.json")["Body"].read())
    assert record["encryption"] and "entry" not in record
    print(f"\nFIGURE disk gone, worker: restore from the bucket {took:.2f} s, upload after the snapshot "
          f"{upload_seconds} s")
    assert "fetched from s3://" in next(s for s in summary["steps"] if s["step"] == "preflight")["detail"]
    assert state.capture(remote_settings) == before


def _redis_values(client, name: bytes) -> list[bytes]:
    kind = client.type(name)
    if kind == b"string":
        return [client.get(name) or b""]
    if kind == b"list":
        return client.lrange(name, 0, -1)
    if kind == b"hash":
        return [k + v for k, v in client.hgetall(name).items()]
    if kind == b"set":
        return list(client.smembers(name))
    if kind == b"zset":
        return client.zrange(name, 0, -1)
    return []
