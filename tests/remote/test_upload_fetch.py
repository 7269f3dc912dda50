"""Upload after a snapshot, the record written last, SHA-256 at both ends, encryption that keeps the bucket's
owner out, `pull` and `list --remote` as an operator runs them."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from rollback import remote
from rollback.errors import ConfigError, IntegrityError
from rollback.manifest import Manifest
from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from tests.conftest import ROOT, cli
from tests.remote.conftest import keys


def test_upload_writes_the_record_last_and_pull_brings_it_back_verified(remote_settings, remote_env, s3, bucket):
    settings = remote_settings
    entry = create_snapshot(settings, notes="before deploy")
    assert remote.read_state(settings, entry["id"])["state"] == "pending"
    result = remote.upload_snapshot(settings, entry["id"])
    assert result["state"] == "ok"
    state = remote.read_state(settings, entry["id"])
    assert state["state"] == "ok" and state["url"] == f"s3://{bucket}/prod/snapshots/{entry['id']}/"
    base = f"prod/snapshots/{entry['id']}/"
    assert keys(s3, bucket) == sorted(base + n for n in [entry["artifacts"]["db"]["file"],
                                                          entry["artifacts"]["data"]["file"], "snapshot.json"])
    record = json.loads(s3.get_object(Bucket=bucket, Key=base + "snapshot.json")["Body"].read())
    assert record["entry"]["artifacts"] == entry["artifacts"] and record["encryption"] is None
    # A second upload (beat's sync, a redelivery) finds the record and sends nothing.
    assert remote.upload_snapshot(settings, entry["id"])["detail"] == "already in the bucket"

    listed = cli(remote_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["remote"]["state"] == "ok"
    assert "ok" in cli(remote_env, "list").stdout.splitlines()[1]
    shown = cli(remote_env, "show", entry["id"], "--json")
    assert json.loads(shown.stdout)["remote"]["state"] == "ok", shown.stderr

    shutil.rmtree(settings.backup_dir)  # the disk is gone
    out = cli(remote_env, "list", "--remote", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["id"], r["local"], r["encrypted"]) for r in rows] == [(entry["id"], False, False)]
    pulled = cli(remote_env, "pull", "latest")
    assert pulled.returncode == 0, pulled.stderr
    assert "SHA-256 verified" in pulled.stdout
    assert Manifest.for_settings(settings).get(entry["id"])["artifacts"] == entry["artifacts"]
    verified = cli(remote_env, "verify", entry["id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_encrypted_copies_hide_data_and_notes_from_the_bucket_owner(remote_settings, remote_env, s3, bucket):
    key = secrets.token_bytes(32)
    env = dict(remote_env, BACKUP_ENCRYPTION_KEY=base64.urlsafe_b64encode(key).decode().rstrip("="))
    settings = Settings.from_env(env).with_overrides(readyz_url=remote_settings.readyz_url)
    assert settings.encryption_key == key and key.hex() not in repr(settings)
    marker = "secret-note-7f3a"
    (settings.data_base_dir / "plain-marker.txt").write_text("PLAINTEXT-MARKER " * 2000)
    entry = create_snapshot(settings, notes=marker)
    remote.upload_snapshot(settings, entry["id"])
    for k in keys(s3, bucket):
        body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        assert marker.encode() not in body and entry["artifacts"]["db"]["sha256"].encode() not in body
    record = json.loads(s3.get_object(Bucket=bucket, Key=f"prod/snapshots/{entry['id']}/snapshot.json")["Body"].read())
    assert "entry" not in record and record["encryption"]["algorithm"].startswith("AES-256-GCM")
    log = settings.rollback_log.read_text()
    assert base64.b64encode(key).decode() not in log and key.hex() not in log

    shutil.rmtree(settings.backup_dir)
    without_key = cli(remote_env, "pull", entry["id"])
    assert without_key.returncode != 0 and "BACKUP_ENCRYPTION_KEY" in without_key.stderr
    assert "Traceback" not in without_key.stderr
    other = dict(env, BACKUP_ENCRYPTION_KEY=base64.b64encode(secrets.token_bytes(32)).decode())
    wrong_key = cli(other, "pull", entry["id"])
    assert wrong_key.returncode != 0 and "another key" in wrong_key.stderr
    pulled = cli(env, "pull", entry["id"])
    assert pulled.returncode == 0, pulled.stderr
    assert (settings.backup_dir / entry["id"]).is_dir()
    assert cli(env, "verify", entry["id"]).returncode == 0


@pytest.mark.parametrize("value,why", [("not base64 at all!", "not valid base64"),
                                       (base64.b64encode(b"short").decode(), "must be 32 bytes")])
def test_a_malformed_key_stops_start_up_with_one_line(remote_env, value, why):
    out = cli(dict(remote_env, BACKUP_ENCRYPTION_KEY=value), "list")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "BACKUP_ENCRYPTION_KEY" in out.stderr and why in out.stderr
    assert value not in out.stderr or value == "not base64 at all!"


@pytest.mark.parametrize("program", ["worker", "beat"])
def test_a_malformed_key_stops_the_worker_and_beat_with_one_line(remote_env, program, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "BACKUP_", "DATA_BASE"))}
    env.update(remote_env, BACKUP_ENCRYPTION_KEY=base64.b64encode(b"short").decode())
    argv = [sys.executable, "-m", "celery", "-A", "tasks", program, "--loglevel", "WARNING"]
    if program == "beat":
        argv += ["--schedule", str(tmp_path / "beat-schedule")]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0 and "BACKUP_ENCRYPTION_KEY" in out.stderr and "32 bytes" in out.stderr


def test_key_file_and_the_key_never_in_the_error(tmp_path, remote_env):
    path = tmp_path / "key"
    path.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    settings = Settings.from_env(dict(remote_env, BACKUP_ENCRYPTION_KEY_FILE=str(path)))
    assert settings.encryption_key is not None
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(dict(remote_env, BACKUP_ENCRYPTION_KEY_FILE=str(path), BACKUP_ENCRYPTION_KEY="x"))
    with pytest.raises(ConfigError, match="BACKUP_REMOTE_URL"):
        Settings.from_env(dict(remote_env, BACKUP_REMOTE_URL="https://bucket/prefix"))


def test_a_local_artifact_that_changed_is_never_published(remote_settings, s3, bucket):
    entry = create_snapshot(remote_settings)
    dump = remote_settings.backup_dir / entry["id"] / entry["artifacts"]["db"]["file"]
    raw = bytearray(dump.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    dump.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="not published"):
        remote.upload_snapshot(remote_settings, entry["id"])
    assert not any(k.endswith("snapshot.json") for k in keys(s3, bucket))
    assert remote.remote_snapshots(remote_settings) == []
