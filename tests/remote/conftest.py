"""A real S3 protocol server for the off-site copy tests: `moto_server` (moto in server mode) in its own
process on a private loopback port; boto3 talks HTTP to it through AWS_ENDPOINT_URL, as it would to R2,
B2 or MinIO. Each test gets a bucket of its own."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import boto3
import pytest

from tests.canary.servers import WebhookReceiver

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rollback-tests", "AWS_SECRET_ACCESS_KEY": "rollback-tests-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`moto_server` as a child process; `extra_env` e.g. INITIAL_NO_AUTH_ACTION_COUNT=0 to check credentials."""

    def __init__(self, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, **(extra_env or {}))
        # `python -m moto.server` is the `moto_server` command, found even where pip's scripts are not on PATH.
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_server, monkeypatch) -> dict:
    """The AWS variables boto3 reads, for this process (monkeypatched) and for child processes (returned)."""
    values = dict(CREDENTIALS, AWS_ENDPOINT_URL=moto_server.url)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def bucket(s3_env) -> str:
    name = f"rollback-{secrets.token_hex(4)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_env):
    return boto3.client("s3")


@pytest.fixture
def remote_env(env, s3_env, bucket) -> dict:
    return dict(env, **s3_env, BACKUP_REMOTE_URL=f"s3://{bucket}/prod", BACKUP_REMOTE_RETRY_DELAY_SEC="0.2",
                BACKUP_REMOTE_UPLOAD_RETRIES="1")


@pytest.fixture
def remote_settings(settings, remote_env):
    """`settings` (migrated, seeded, live /readyz) with the bucket configured."""
    from rollback.settings import Settings

    return Settings.from_env(remote_env).with_overrides(readyz_url=settings.readyz_url)


@pytest.fixture
def webhook():
    server = WebhookReceiver()
    yield server
    server.stop()


def keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.fixture
def live_env(remote_env, settings):
    """Overrides tests/conftest.py's: the worker processes get the bucket configuration too."""
    return dict(remote_env, READYZ_URL=settings.readyz_url)
