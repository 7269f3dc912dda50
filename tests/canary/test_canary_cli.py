"""`python -m manage.rollback canary` through a real `celery -A tasks worker` subprocess."""

from __future__ import annotations

import json
import os
import signal

from rollback import canary
from rollback.manifest import Manifest
from rollback.snapshot import create_snapshot
from tasks import app
from tasks.canary import enqueue_canary
from tests.conftest import cli
from tests.e2e.helpers import wait_for


def test_canary_follows_its_reruns_to_the_ready_verdict(settings, live_env, worker_process):
    live_env.update(ROLLBACK_READY_SUCCESSES="3", ROLLBACK_READY_INTERVAL_SEC="0.5")
    snap = create_snapshot(settings, notes="before deploy")
    worker_process()

    done = cli(live_env, "canary", "--deploy-id", "deploy-42", "--json")
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["status"] == "ready" and verdict["probes"] == 3 and verdict["snapshot_id"] == snap["id"]
    assert "[canary   ]" in done.stderr and "consecutive" in done.stderr  # progress of the re-runs
    assert Manifest(settings.backup_dir).get(snap["id"])["ready_check"]["deploy_id"] == "deploy-42"

    queued = cli(live_env, "canary", "--deploy-id", "deploy-43", "--no-wait", "--json")
    assert queued.returncode == 0, queued.stderr
    task = json.loads(queued.stdout)
    assert task["deploy_id"] == "deploy-43"
    assert app.AsyncResult(task["task_id"]).get(timeout=60)["status"] == "ready"


def test_bad_input_exits_2(settings, live_env, worker_process):
    for args in (["--deploy-id", "../escape"], ["--snapshot", "not-an-id"]):
        done = cli(live_env, "canary", *args)
        assert done.returncode == 2 and "invalid" in done.stderr, done.stderr
    worker_process()
    done = cli(live_env, "canary", "--deploy-id", "d1")  # no snapshot was ever taken
    assert done.returncode == 2 and "no snapshot taken before deploy d1" in done.stderr
    done = cli(live_env, "canary", "--snapshot", "20200101T000000Z-abcdef")
    assert done.returncode == 2 and "not found" in done.stderr


def test_a_canary_outlives_its_worker(settings, live_env, worker_process, readyz):
    live_env.update(ROLLBACK_READY_TIMEOUT_SEC="60", ROLLBACK_READY_INTERVAL_SEC="1", ROLLBACK_READY_SUCCESSES="2")
    readyz.set("fail")
    create_snapshot(settings)
    first = worker_process("w1")
    result = enqueue_canary("survivor")
    wait_for(lambda: (canary.load_record(settings, "survivor") or {}).get("probes"), 30, 0.05, "a first probe")
    os.killpg(first.pid, signal.SIGKILL)  # its next tick is now an unacknowledged message for hours
    first.wait()
    readyz.set("ok")
    # A worker starting once the record went stale (no tick for 10 s) resumes the canary.
    wait_for(lambda: canary.stale_canaries(settings), 30, 0.2, "the record to go stale")
    worker_process("w2")
    assert result.get(timeout=60)["status"] == "ready"
    assert "CANARY deploy=survivor status=ready" in settings.rollback_log.read_text()
