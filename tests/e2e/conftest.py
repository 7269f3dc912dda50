"""End-to-end fixtures: real `celery -A tasks worker` and `celery -A tasks beat` processes (logs in
files, so a chatty process never blocks on a full pipe), and the servers the canary talks to."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.canary.fixtures import readyz, settings, webhook  # noqa: F401
from tests.conftest import ROOT
from tests.e2e.helpers import operator_env, stop_process_group


@pytest.fixture
def celery_processes(live_env, redis_db, tmp_path):
    """start("worker"|"beat", name) -> Popen; every process is stopped (its whole group) at the end."""
    from tasks import app

    app.conf.update(broker_url=live_env["CELERY_BROKER_URL"], result_backend=live_env["CELERY_RESULT_BACKEND"])
    procs: list[subprocess.Popen] = []

    def start(kind: str, name: str = "e2e") -> subprocess.Popen:
        log = tmp_path / f"{kind}-{name}.log"
        if kind == "worker":
            hostname = f"{name}-{os.getpid()}@%h"
            args = ["worker", "--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle",
                    "--hostname", hostname]
        else:
            args = ["beat", "-s", str(tmp_path / f"beat-{name}-schedule"), "--max-interval", "1"]
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", *args, "--loglevel", "INFO"],
                                    cwd=ROOT, env=operator_env(live_env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        proc.log = log
        procs.append(proc)
        if kind == "worker":
            _wait_for_worker(app, f"{name}-{os.getpid()}@", proc)
        return proc

    yield start
    for proc in procs:
        stop_process_group(proc)


def _wait_for_worker(app, prefix: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not any(prefix in host for reply in app.control.ping(timeout=0.5) for host in reply):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"worker did not start: {proc.log.read_text()[-2000:]}")
