"""Fault: the S3 endpoint is down when the worker uploads. The snapshot (and the deploy waiting for it)
is complete locally all the same; the upload is retried with backoff, the webhook is alerted after the
last try, the state says `failed` with the error, and once the endpoint is back beat's sync uploads it."""

from __future__ import annotations

import json
import time

import pytest

from rollback import remote
from rollback.verify import verify_snapshot
from tests.conftest import cli
from tests.remote.conftest import free_port

DEAD = f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def live_env(remote_env, settings, webhook):
    """The worker's environment: the endpoint unreachable, alerts to the test's webhook."""
    return dict(remote_env, AWS_ENDPOINT_URL=DEAD, ROLLBACK_NOTIFY_WEBHOOK_URL=webhook.url,
                READYZ_URL=settings.readyz_url, BACKUP_REMOTE_UPLOAD_RETRIES="2",
                BACKUP_REMOTE_RETRY_DELAY_SEC="0.5")


def test_endpoint_down_snapshot_complete_upload_retried_then_alerted(remote_settings, live_env, worker_process,
                                                                    webhook):
    worker_process()
    started = time.monotonic()
    taken = cli(live_env, "snapshot", "--notes", "endpoint down", "--json")
    snapshot_took = time.monotonic() - started
    assert taken.returncode == 0, taken.stderr
    snapshot_id = json.loads(taken.stdout)["id"]
    deadline = time.monotonic() + 60
    while not (doc := remote.read_state(remote_settings, snapshot_id)).get("final"):
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)
    alerted_after = time.monotonic() - started
    assert doc["state"] == "failed" and doc["attempt"] == 3 and "endpoint unreachable" in doc["error"]
    deadline = time.monotonic() + 10
    while not webhook.texts():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert snapshot_id in webhook.texts()[0] and "after 3 tries" in webhook.texts()[0]
    listed = json.loads(cli(live_env, "list", "--json").stdout)
    assert listed[0]["remote"]["state"] == "failed" and "endpoint unreachable" in listed[0]["remote"]["error"]
    # Nothing lost: the local snapshot is complete and verified.
    assert verify_snapshot(remote_settings, snapshot_id)["ok"]
    # The endpoint is back (this process talks to the live moto server): beat's sync uploads it.
    assert remote.needing_upload(remote_settings) == [snapshot_id]
    assert remote.upload_snapshot(remote_settings, snapshot_id)["state"] == "ok"
    assert [r["id"] for r in remote.remote_snapshots(remote_settings)] == [snapshot_id]
    print(f"\nFIGURE endpoint down: snapshot {snapshot_took:.2f} s (not held up), 3 tries, alert after "
          f"{alerted_after:.2f} s")
