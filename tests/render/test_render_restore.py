"""A whole restore with CODE_ROLLBACK_STRATEGY=render: database and data by the core, code by a
rollback through (the fake of) Render's API, which "restarts the service" on the old commit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rollback.errors import RollbackError
from rollback.journal import Journal
from rollback.restore import run_restore_local
from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from tasks.restore import enqueue_restore
from tests import state
from tests.conftest import ROOT, git
from tests.e2e.target_app import TargetApp


def test_restore_rolls_the_code_back_through_render(settings, fake_render):
    target = TargetApp(settings)  # ready only with the right code, data, database and revision
    settings = settings.with_overrides(readyz_url=target.url)
    try:
        _restore_through_render(settings, fake_render)
    finally:
        target.stop()


def _restore_through_render(settings, fake_render):
    repo = settings.app_repo_dir
    good_commit = state.git_head(repo)
    fake_render.add_deploy("1" * 40, status="live")
    fake_render.add_deploy(good_commit, status="live")
    # When the rollback deploy goes live, the instance runs the old commit again.
    fake_render.on_live = lambda deploy: git(repo, "reset", "-q", "--hard", deploy["commit"]["id"])
    rs = settings.with_overrides(code_rollback_strategy="render", render_api_key=fake_render.api_key,
                                 render_service_id=fake_render.service_id, render_api_url=fake_render.url)
    before = state.capture(rs)
    snap = create_snapshot(rs, notes="before deploy")
    assert snap["app_revision"] == good_commit and snap["app_dirty"] is False

    state.bad_deploy(rs, repo)
    fake_render.add_deploy(state.git_head(repo), status="live")
    doc = run_restore_local(rs, snap["id"], reason="readyz_fail", auto=True)

    assert doc["status"] == "succeeded", doc
    assert "Render rollback to deploy" in doc["steps"]["code"]["detail"]
    assert fake_render.live()["commit"]["id"] == good_commit
    assert state.capture(rs) == before
    # The key is only ever sent in the Authorization header.
    written = rs.rollback_log.read_text() + Journal(rs.backup_dir).path(doc["txn"]).read_text() + \
        (rs.backup_dir / "manifest.json").read_text()
    assert fake_render.api_key not in written


def test_a_snapshot_whose_build_expired_is_restored_through_a_rebuild(settings, fake_render):
    target = TargetApp(settings)
    settings = settings.with_overrides(readyz_url=target.url)
    try:
        repo = settings.app_repo_dir
        good_commit = state.git_head(repo)
        fake_render.add_deploy(good_commit, status="live")
        fake_render.on_live = lambda deploy: git(repo, "reset", "-q", "--hard", deploy["commit"]["id"])
        fake_render.build_retention = 2
        rs = settings.with_overrides(code_rollback_strategy="render", render_api_key=fake_render.api_key,
                                     render_service_id=fake_render.service_id, render_api_url=fake_render.url,
                                     render_build_retention=2)
        before = state.capture(rs)
        snap = create_snapshot(rs, notes="before deploy")
        state.bad_deploy(rs, repo)
        for i in range(2):  # two more builds: the snapshot's one is past Render's retention
            fake_render.add_deploy(f"{i + 1:040x}", status="live")
        fake_render.add_deploy(state.git_head(repo), status="live")
        doc = run_restore_local(rs, snap["id"], reason="readyz_fail", auto=True)
    finally:
        target.stop()
    assert doc["status"] == "succeeded", doc
    assert "Render rebuild of" in doc["steps"]["code"]["detail"]
    assert not fake_render.created_by("rollback") and fake_render.live()["trigger"] == "api"
    assert state.capture(rs) == before


def test_a_commit_render_cannot_bring_back_is_refused_before_any_change(settings, fake_render):
    repo = settings.app_repo_dir
    fake_render.add_deploy(state.git_head(repo), status="live")
    rs = settings.with_overrides(code_rollback_strategy="render", render_api_key=fake_render.api_key,
                                 render_service_id=fake_render.service_id, render_api_url=fake_render.url)
    snap = create_snapshot(rs, notes="before deploy")
    fake_render.deploys[0]["status"] = "build_failed"  # Render lost the only deploy of that commit
    state.bad_deploy(rs, repo)
    fake_render.add_deploy(state.git_head(repo), status="live")
    after_bad_deploy = state.capture(rs)
    with pytest.raises(RollbackError, match="preflight failed: Render has no successful deploy of commit"):
        run_restore_local(rs, snap["id"], reason="manual")
    assert state.capture(rs) == after_bad_deploy  # db, data and code untouched
    assert not any(r["method"] in ("POST", "PATCH") for r in fake_render.requests)


# -- through the worker, with our own pre-deploy hook on the rollback deploy -----------------------
@pytest.fixture
def target(settings):
    app = TargetApp(settings)
    yield app
    app.stop()


@pytest.fixture
def live_env(env, target, fake_render):
    """The worker's environment: the render strategy against the fake, readiness judged by the target app."""
    return dict(env, READYZ_URL=target.url, CODE_ROLLBACK_STRATEGY="render", RENDER_API_KEY=fake_render.api_key,
                RENDER_SERVICE_ID=fake_render.service_id, RENDER_API_URL=fake_render.url,
                ROLLBACK_READY_INTERVAL_SEC="0.2", ROLLBACK_STANDBY="false")


@pytest.mark.slow
def test_the_rollback_deploy_passes_our_own_pre_deploy_hook(live_env, fake_render, worker_process):
    """render.yaml's preDeployCommand runs for the restore's own rollback deploy: the hook recognises
    it (no check, no snapshot against the restore's lock), the deploy goes live, the restore succeeds and
    auto-deploy is off afterwards."""
    rs = Settings.from_env(live_env)
    repo = rs.app_repo_dir
    good_commit = state.git_head(repo)
    fake_render.add_deploy(good_commit, status="live")
    fake_render.on_live = lambda deploy: git(repo, "reset", "-q", "--hard", deploy["commit"]["id"])
    fake_render.pre_deploy_command = f"bash {ROOT}/scripts/deploy_hook.sh pre"
    fake_render.pre_deploy_env = dict(live_env, ROLLBACK_PYTHON=sys.executable, DEPLOY_HOOK_INSPECT_TIMEOUT="2")
    before = state.capture(rs)
    snap = create_snapshot(rs, notes="before deploy")
    state.bad_deploy(rs, repo)
    fake_render.add_deploy(state.git_head(repo), status="live")
    worker_process()

    doc, result = enqueue_restore(snap["id"], reason="readyz_fail", auto=True, settings=rs)
    result.get(timeout=240, propagate=False)
    doc = Journal(rs.backup_dir).load(doc["txn"])

    run = fake_render.pre_deploy_runs[0]
    assert run["returncode"] == 0, run["output"]
    assert "was started by the code step of a restore in progress" in run["output"]
    assert doc["status"] == "succeeded", (doc, run["output"])
    assert len(fake_render.created_by("rollback")) == 1 and fake_render.live()["commit"]["id"] == good_commit
    assert state.capture(rs) == before
    assert fake_render.auto_deploy == "no" and fake_render.push("f" * 40) is None


def test_a_rollback_deploy_without_a_restore_in_its_code_step_is_a_normal_deploy(env, fake_render):
    """Render says the deploy in pre-deploy is a rollback of this commit, but no worker runs a restore's
    code step (a rollback from the Dashboard): the hook goes on with check and snapshot (which fail here:
    no worker), as for any deploy."""
    target_deploy = fake_render.add_deploy("a" * 40, status="deactivated")
    fake_render.add_deploy("b" * 40, status="live")
    fake_render.add_deploy(target_deploy["commit"]["id"], status="pre_deploy_in_progress", trigger="rollback")
    hook_env = dict(env, CODE_ROLLBACK_STRATEGY="render", RENDER_API_KEY=fake_render.api_key,
                    RENDER_SERVICE_ID=fake_render.service_id, RENDER_API_URL=fake_render.url,
                    RENDER_GIT_COMMIT="a" * 40, ROLLBACK_PYTHON=sys.executable, DEPLOY_HOOK_INSPECT_TIMEOUT="1",
                    CELERY_BROKER_URL="redis://127.0.0.1:6379/15", CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/15")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "deploy_hook.sh"), "pre"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **hook_env))
    assert done.returncode != 0
    assert "is a rollback, but no restore is in its code step: a normal deploy" in done.stderr
    assert "no Celery worker answered" in done.stderr
