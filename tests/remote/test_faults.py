"""Fault cases of the off-site copy, each ending with nothing lost: wrong credentials (a clear error),
upload killed mid-way (no half snapshot visible remotely; the next upload completes it), a corrupted
remote object (refused on download, local untouched). The endpoint-down case is test_endpoint_down.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time

import pytest

from rollback import remote
from rollback.errors import IntegrityError
from rollback.remote import catalog
from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from rollback.verify import verify_snapshot
from tests import state
from tests.conftest import ROOT, cli
from tests.remote.conftest import MotoServer, keys

# Runs the real upload in a child process that SIGKILLs itself right after the first artifact is in the
# bucket, before the second one and before the record: the worker dying mid-upload.
KILL_AFTER_FIRST_OBJECT = """
import os, signal, sys
from rollback.remote import store, transfer
from rollback.settings import Settings
real = store.RemoteStore.upload
def upload(self, reader, key, progress):
    real(self, reader, key, progress)
    os.kill(os.getpid(), signal.SIGKILL)
store.RemoteStore.upload = upload
transfer.upload_snapshot(Settings.from_env(), sys.argv[1])
"""


def _tree_digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_wrong_credentials_give_a_clear_error(remote_settings, remote_env, monkeypatch):
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # this one checks every request's signature
    try:
        env = dict(remote_env, AWS_ENDPOINT_URL=server.url, AWS_SECRET_ACCESS_KEY="wrong")
        checked = cli(env, "check", "--json")
        remote_check = next(c for c in json.loads(checked.stdout) if c["name"] == "remote")
        assert remote_check["level"] == "fail" and "credentials refused" in remote_check["detail"]
        assert "AWS_ACCESS_KEY_ID" in remote_check["detail"] and "wrong" not in remote_check["detail"]
        listed = cli(env, "list", "--remote")
        assert listed.returncode == 1 and "credentials refused" in listed.stderr and "Traceback" not in listed.stderr
        settings = Settings.from_env(env).with_overrides(readyz_url=remote_settings.readyz_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)  # boto3 reads its variables from the process
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        entry = create_snapshot(settings)
        with pytest.raises(remote.RemoteError, match="credentials refused"):
            remote.upload_snapshot(settings, entry["id"])
        assert verify_snapshot(settings, entry["id"])["ok"]  # the local snapshot is whole
    finally:
        server.stop()


def test_upload_killed_midway_leaves_no_half_snapshot(remote_settings, remote_env, s3, bucket, monkeypatch):
    entry = create_snapshot(remote_settings)
    child = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_OBJECT, entry["id"]], cwd=ROOT, env=remote_env,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    stored = keys(s3, bucket)
    assert len(stored) == 1 and not stored[0].endswith("snapshot.json")  # one artifact, no record
    assert remote.remote_snapshots(remote_settings) == []
    assert "no complete snapshot" in cli(remote_env, "list", "--remote").stdout
    killed_state = remote.read_state(remote_settings, entry["id"])
    assert killed_state["state"] == "uploading" and 0 <= killed_state["percent"] < 100 and killed_state["total"] > 0
    assert verify_snapshot(remote_settings, entry["id"])["ok"]
    # Remote retention removes the objects of an upload that never completed once they are old.
    monkeypatch.setattr(catalog, "ORPHAN_AGE", catalog.timedelta(seconds=0))
    time.sleep(1.1)
    assert remote.prune_remote(remote_settings)["orphans_removed"] == [entry["id"]]
    assert keys(s3, bucket) == []
    started = time.monotonic()
    assert remote.upload_snapshot(remote_settings, entry["id"])["state"] == "ok"
    print(f"\nFIGURE killed mid-way: re-upload {time.monotonic() - started:.2f} s")
    assert [r["id"] for r in remote.remote_snapshots(remote_settings)] == [entry["id"]]


def test_corrupted_remote_object_is_refused_and_local_untouched(remote_settings, remote_env, s3, bucket):
    entry = create_snapshot(remote_settings)
    remote.upload_snapshot(remote_settings, entry["id"])
    key = f"prod/snapshots/{entry['id']}/{entry['artifacts']['data']['file']}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    folder = remote_settings.backup_dir / entry["id"]
    local_before = _tree_digest(folder)
    pulled = cli(remote_env, "pull", entry["id"])
    assert pulled.returncode == 1 and "SHA-256 mismatch" in pulled.stderr and "refused" in pulled.stderr
    assert _tree_digest(folder) == local_before
    assert not list(remote_settings.backup_dir.glob(".tmp-fetch-*"))
    # With the local copy gone as well, the restore is refused at preflight and changes nothing.
    state.bad_deploy(remote_settings, remote_settings.app_repo_dir)
    live_before = state.capture(remote_settings)
    shutil.rmtree(remote_settings.backup_dir)
    out = cli(dict(remote_env, READYZ_URL=remote_settings.readyz_url), "restore", "--snapshot", "latest",
              "--reason", "manual", "--yes", "--local")
    assert out.returncode == 1 and "SHA-256 mismatch" in out.stdout + out.stderr
    assert state.capture(remote_settings) == live_before


def test_encrypted_object_altered_in_the_bucket_fails_authentication(remote_settings, remote_env, s3, bucket):
    import base64
    import secrets

    env = dict(remote_env, BACKUP_ENCRYPTION_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    settings = Settings.from_env(env).with_overrides(readyz_url=remote_settings.readyz_url)
    entry = create_snapshot(settings)
    remote.upload_snapshot(settings, entry["id"])
    key = f"prod/snapshots/{entry['id']}/{entry['artifacts']['db']['file']}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-5] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    shutil.rmtree(settings.backup_dir)
    with pytest.raises(IntegrityError):
        remote.fetch_snapshot(settings, entry["id"])
    assert not (settings.backup_dir / entry["id"]).exists()
