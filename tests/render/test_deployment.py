"""The Render deployment as written: render.yaml matches the code and the docs, and the process
runner of its start command really runs web + worker + beat, enqueues the canary and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from rollback import canary
from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from tasks import app
from tests.conftest import ROOT
from tests.e2e.helpers import http_status, operator_env, stop_process_group, wait_for

yaml = pytest.importorskip("yaml")
BLUEPRINT = yaml.safe_load((ROOT / "render.yaml").read_text())
WEB = next(s for s in BLUEPRINT["services"] if s["type"] == "web")
KV = next(s for s in BLUEPRINT["services"] if s["type"] == "keyvalue")
# Variables read by the web app and the process runner rather than by Settings.
OUTSIDE_SETTINGS = {"PYTHON_VERSION", "BEAT_SCHEDULE_FILE", "ALLOW_ADMIN_ROLLBACK_IPS"}


def render_environment() -> dict[str, str]:
    """The environment Render would give the web service, with stand-ins for the generated values."""
    env = {"RENDER_SERVICE_ID": "srv-example", "RENDER_GIT_COMMIT": "0" * 40, "PORT": "10000"}
    for var in WEB["envVars"]:
        if "value" in var:
            env[var["key"]] = str(var["value"])
        elif "fromDatabase" in var:
            env[var["key"]] = "postgresql://app:pw@dpg-example-a/app"
        elif "fromService" in var:
            env[var["key"]] = "redis://red-example:6379"
        else:  # sync: false, entered in the Dashboard
            env[var["key"]] = {"ROLLBACK_NOTIFY_WEBHOOK_URL": "https://hooks.example.com/x"}.get(var["key"], "secret")
    return env


def test_the_blueprint_configures_a_valid_service():
    env = render_environment()
    settings = Settings.from_env(env, cwd=ROOT)
    mount = WEB["disk"]["mountPath"]
    assert settings.code_rollback_strategy == "render" and settings.render_service_id == "srv-example"
    # Everything that must survive a deploy is on the disk; the backups are not inside the data dir.
    for path in (settings.data_base_dir, settings.backup_dir, settings.log_dir, env["BEAT_SCHEDULE_FILE"]):
        assert str(path).startswith(mount + "/"), path
    assert settings.backup_dir.parent == settings.data_base_dir.parent == type(settings.backup_dir)(mount)
    assert WEB["runtime"] == "python" and WEB["plan"] != "free" and WEB["healthCheckPath"] == "/healthz"
    assert WEB["startCommand"] == "python scripts/render_start.py"
    assert "scripts/deploy_hook.sh pre" in WEB["preDeployCommand"] and "alembic upgrade head" in WEB["preDeployCommand"]
    assert KV["ipAllowList"] == [] and KV["maxmemoryPolicy"] == "noeviction"
    refs = {v["fromService"]["name"] for v in WEB["envVars"] if "fromService" in v}
    assert refs == {KV["name"]}
    dbs = {v["fromDatabase"]["name"] for v in WEB["envVars"] if "fromDatabase" in v}
    assert dbs == {d["name"] for d in BLUEPRINT["databases"]}
    known = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "rollback" / "settings.py").read_text()))
    assert {v["key"] for v in WEB["envVars"]} - known == OUTSIDE_SETTINGS


def test_the_docs_describe_every_variable_of_the_blueprint():
    doc = (ROOT / "docs" / "deploy-render.md").read_text()
    missing = [v["key"] for v in WEB["envVars"] if v["key"] not in doc]
    assert not missing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_process_runner_runs_web_worker_and_beat_and_enqueues_the_canary(settings, live_env, redis_db,
                                                                          tmp_path):
    app.conf.update(broker_url=live_env["CELERY_BROKER_URL"], result_backend=live_env["CELERY_RESULT_BACKEND"])
    create_snapshot(settings, notes="before this deploy")
    port = _free_port()
    commit = "c0ffee" * 6 + "abcd"
    env = operator_env(dict(live_env, PORT=str(port), RENDER_GIT_COMMIT=commit, WORKER_CONCURRENCY="1",
                            BEAT_SCHEDULE_FILE=str(tmp_path / "beat-schedule")))
    with open(tmp_path / "runner.log", "wb") as out:
        runner = subprocess.Popen([sys.executable, "scripts/render_start.py"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, 60, 0.2, "the web process")
        deploy_id = f"render-{commit[:12]}"
        record = wait_for(lambda: (canary.load_record(settings, deploy_id) or {}).get("verdict"), 90, 0.2,
                          "the canary enqueued by the post-deploy hook")
        assert record["status"] == "ready"
        assert "beat: Starting" in (tmp_path / "runner.log").read_text()
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(40) == 0
        with pytest.raises(ProcessLookupError):  # web, worker and beat are gone with it
            os.killpg(runner.pid, 0)
    finally:
        stop_process_group(runner, grace=5)
