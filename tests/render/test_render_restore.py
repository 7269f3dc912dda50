"""A whole restore with CODE_ROLLBACK_STRATEGY=render: database and data by the core, code by a
rollback through (the fake of) Render's API, which "restarts the service" on the old commit."""

from __future__ import annotations

from rollback.journal import Journal
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import git
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
