"""The deploy flow end to end, with real processes: a worker and beat (`celery -A tasks ...`), the
deploy hook (`scripts/deploy_hook.sh pre|post`) talking to them through Redis, a target app whose
/readyz depends on code, data, database and Alembic revision, and a webhook receiver."""

from __future__ import annotations

import json
import time

import pytest

from rollback import canary
from rollback.journal import Journal
from rollback.manifest import Manifest
from tests import state
from tests.e2e.helpers import canary_lines, http_status, run_hook, start_hook, wait_for
from tests.e2e.target_app import TargetApp

pytestmark = pytest.mark.slow

FAST = {"ROLLBACK_READY_TIMEOUT_SEC": "3", "ROLLBACK_READY_INTERVAL_SEC": "0.25", "ROLLBACK_READY_SUCCESSES": "2"}


@pytest.fixture
def target_app(settings):
    app = TargetApp(settings)
    yield app
    app.stop()


@pytest.mark.parametrize("standby", ["true", "false"], ids=["warm-standby", "cold-restore"])
def test_a_bad_deploy_is_rolled_back_by_the_canary(settings, live_env, celery_processes, target_app, webhook,
                                                    capsys, standby):
    live_env.update(FAST, READYZ_URL=target_app.url, ROLLBACK_NOTIFY_WEBHOOK_URL=webhook.url,
                    BACKUP_PRUNE_SCHEDULE="5", ROLLBACK_STANDBY=standby)
    settings = settings.with_overrides(readyz_url=target_app.url)
    celery_processes("worker")
    celery_processes("beat")
    assert http_status(target_app.url) == 200
    before = state.capture(settings)

    pre = run_hook(live_env, "pre", "--deploy-id", "e2e-1")
    assert pre.returncode == 0, pre.stderr
    snap = Manifest(settings.backup_dir).entries()[-1]
    assert snap["notes"].startswith("deploy ") and snap["notes"].endswith(" id=e2e-1")

    # The deploy: a commit that adds a migration and breaks /readyz, the migration applied, data changed.
    state.bad_deploy(settings, settings.app_repo_dir)
    assert state.alembic_version(settings) == "0003_bad_deploy"
    assert http_status(target_app.url) == 503

    post = start_hook(live_env, "post", "--deploy-id", "e2e-1", "--json")
    record = lambda: canary.load_record(settings, "e2e-1") or {}  # noqa: E731
    not_ready_ts = wait_for(lambda: record().get("not_ready_ts"), timeout=60, what="the not-ready verdict")
    ready_again = wait_for(lambda: http_status(target_app.url) == 200 and time.time(), timeout=60,
                           what="/readyz 200 after the automatic rollback")
    out, err = post.communicate(timeout=120)

    assert post.returncode == 1, err  # not ready: rolled back
    verdict = json.loads(out)
    assert verdict["status"] == "rolled_back" and verdict["snapshot_id"] == snap["id"], verdict
    after = state.capture(settings)
    for part in ("head", "alembic", "schema", "rows", "tree"):
        assert after[part] == before[part], part
    assert http_status(target_app.url) == 200

    recovery = ready_again - not_ready_ts
    with capsys.disabled():
        print(f"\n[e2e, standby={standby}] canary not-ready verdict -> /readyz 200 again: {recovery:.2f} s "
              f"(canary's own measure: {verdict['recovery_sec']:.2f} s)")
    assert recovery < 60

    journals = Journal(settings.backup_dir).all()
    assert len(journals) == 1
    assert journals[0]["auto"] is True and journals[0]["reason"] == "readyz_fail"
    assert journals[0]["requested_by"] == "canary" and journals[0]["status"] == "succeeded"
    lines = canary_lines(settings.rollback_log)
    assert any("status=not_ready" in line and "action=rollback" in line for line in lines)
    assert "status=rolled_back" in lines[-1] and "deploy=e2e-1" in lines[-1]
    assert len(webhook.messages) == 2 and "Automatic rollback" in webhook.texts()[0]


def test_a_flapping_app_is_rolled_back_at_most_once(settings, live_env, celery_processes, readyz, webhook):
    live_env.update(FAST, ROLLBACK_NOTIFY_WEBHOOK_URL=webhook.url)
    celery_processes("worker")
    assert run_hook(live_env, "pre", "--deploy-id", "flappy").returncode == 0
    readyz.set("flap")  # after the deploy: 200, 503, 200, ...: never two successes in a row

    first = run_hook(live_env, "post", "--deploy-id", "flappy", "--json")
    assert first.returncode == 1, first.stderr
    assert json.loads(first.stdout)["status"] == "rolled_back"
    # Watched again (an instance restart runs the hook again): still flapping, no second rollback.
    second = run_hook(live_env, "post", "--deploy-id", "flappy", "--json")
    assert second.returncode == 1, second.stderr
    verdict = json.loads(second.stdout)
    assert verdict["status"] == "not_ready" and "already rolled back once" in verdict["message"]

    autos = [j for j in Journal(settings.backup_dir).all() if j.get("auto")]
    assert len(autos) == 1
    assert sum("status=rolled_back" in line for line in canary_lines(settings.rollback_log)) == 1
    assert "not again" in webhook.texts()[-1]


def test_with_the_canary_disabled_a_failing_deploy_only_alerts(settings, live_env, celery_processes, readyz,
                                                               webhook):
    live_env.update(FAST, ROLLBACK_CANARY_ENABLED="false", ROLLBACK_NOTIFY_WEBHOOK_URL=webhook.url)
    celery_processes("worker")
    assert run_hook(live_env, "pre").returncode == 0  # the app is ready before the deploy (the hook checks)
    readyz.set("fail")  # the deploy breaks it

    done = run_hook(live_env, "post", "--deploy-id", "off-1", "--json")
    assert done.returncode == 1, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["status"] == "not_ready" and verdict["auto_rollback"] is False
    assert Journal(settings.backup_dir).all() == []
    assert "Automatic rollback is OFF" in webhook.texts()[0]
    assert "action=alert_only" in canary_lines(settings.rollback_log)[-1]
