"""What can defeat a code rollback on Render, against the fake: an expired build, a retried POST, our
own pre-deploy hook on the rollback deploy, and the next auto-deploy."""

from __future__ import annotations

import pytest

from rollback.errors import RollbackError
from rollback.journal import Journal
from rollback.render import REBUILD, ROLLBACK, RenderApiError, plan_code_restore
from tests.render.fake_render import Fault
from tests.render.test_render_strategy import NEW, OLD, step_context, strategy


def builds_after_old(fake, newer: int) -> dict:
    """OLD went live, then `newer` other builds (NEW live on top)."""
    good = fake.add_deploy(OLD, status="live")
    for i in range(newer - 1):
        fake.add_deploy(f"{i + 1:040x}", status="live")
    fake.add_deploy(NEW, status="live")
    return good


def posts(fake, suffix: str) -> list[dict]:
    return [r for r in fake.requests if r["method"] == "POST" and r["path"].endswith(suffix)]


# -- build retention ------------------------------------------------------------------------------
def test_a_retained_build_is_rolled_back_to(fake_render, tmp_path):
    good = builds_after_old(fake_render, newer=4)  # OLD is the 5th newest build
    fake_render.build_retention = 5
    plan = plan_code_restore(strategy(fake_render).client, OLD, retention=5)
    assert plan.action == ROLLBACK and plan.deploy.id == good["id"]
    detail = strategy(fake_render, retention=5).restore(step_context(tmp_path), OLD)
    assert "Render rollback to deploy" in detail and not posts(fake_render, "/deploys")


def test_an_expired_build_is_rebuilt_from_its_commit(fake_render, tmp_path):
    builds_after_old(fake_render, newer=5)  # OLD is the 6th newest build: Render no longer keeps it
    fake_render.build_retention = 5
    rollbacks_by_render = fake_render.created_by("rollback")
    ctx = step_context(tmp_path)
    seen = []
    ctx.progress = lambda done, total, message: seen.append(message)
    preflight = strategy(fake_render, retention=5).check_available(OLD)
    assert "rebuild of commit aaaaaaaaaaaa" in preflight and "slower" in preflight

    detail = strategy(fake_render, retention=5).restore(ctx, OLD)
    assert not posts(fake_render, "/rollback") and fake_render.created_by("rollback") == rollbacks_by_render
    assert [r["body"] for r in posts(fake_render, "/deploys")] == [{"commitId": OLD}]
    live = fake_render.live()
    assert live["commit"]["id"] == OLD and live["trigger"] == "api"
    assert any("rebuild" in m and "slower" in m for m in seen)  # the progress says why it takes longer
    assert "rebuild" in detail and ctx.marks()["render_rollback"]["action"] == REBUILD


def test_a_rollbacks_own_deploys_do_not_count_as_builds(fake_render):
    """A rollback reuses its target's build: five rollbacks on top keep OLD's build among the newest."""
    good = builds_after_old(fake_render, newer=4)
    for _ in range(5):
        fake_render.add_deploy(NEW, status="live", trigger="rollback")
    assert plan_code_restore(strategy(fake_render).client, OLD, retention=5).deploy.id == good["id"]


def test_the_retention_bound_is_what_render_enforces(fake_render):
    """Our count and the fake's (Render's) agree: one more build and Render refuses, with its message."""
    good = builds_after_old(fake_render, newer=5)
    fake_render.build_retention = 5
    client = strategy(fake_render).client
    with pytest.raises(RenderApiError, match="error 400 on POST .*/rollback: the build of deploy .* is no longer"):
        client.rollback(client.get_deploy(good["id"]))
    assert plan_code_restore(client, OLD, retention=5).action == REBUILD


def test_a_commit_render_never_ran_is_refused_before_any_change(fake_render):
    fake_render.add_deploy(OLD, status="build_failed")
    fake_render.add_deploy(NEW, status="live")
    with pytest.raises(RollbackError, match="no successful deploy of commit aaaaaaaaaaaa"):
        strategy(fake_render).check_available(OLD)
    assert [r["method"] for r in fake_render.requests] == ["GET"]


# -- no blind retry of the POST -------------------------------------------------------------------
@pytest.mark.parametrize("fault", [
    Fault(502, apply=True),  # Render started the rollback, the answer was lost
    Fault(503),  # Render did not start it
], ids=["carried-out", "not-carried-out"])
def test_a_server_error_on_the_rollback_post_ends_with_one_rollback_deploy(fake_render, tmp_path, fault):
    builds_after_old(fake_render, newer=2)
    real_post = fake_render.handle

    def fail_first_post(method, path, query, body, auth):
        if method == "POST" and not posts(fake_render, "/rollback"):
            fake_render.faults.insert(0, fault)
        return real_post(method, path, query, body, auth)

    fake_render.handle = fail_first_post
    ctx = step_context(tmp_path)
    strategy(fake_render).restore(ctx, OLD)
    assert len(fake_render.created_by("rollback")) == 1
    assert len(posts(fake_render, "/rollback")) == (1 if fault.apply else 2)
    assert ctx.marks()["render_rollback"]["deploy"] == fake_render.created_by("rollback")[0]["id"]
    assert fake_render.live()["commit"]["id"] == OLD


def test_a_timeout_on_the_rollback_post_adopts_the_deploy_it_caused(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    real_post = fake_render.handle

    def slow_first_post(method, path, query, body, auth):
        if method == "POST" and not posts(fake_render, "/rollback"):
            fake_render.faults.insert(0, Fault(200, apply=True, delay=1.0))
        return real_post(method, path, query, body, auth)

    fake_render.handle = slow_first_post
    strategy(fake_render, request_timeout=0.3).restore(step_context(tmp_path), OLD)
    assert len(posts(fake_render, "/rollback")) == 1 and len(fake_render.created_by("rollback")) == 1
    assert fake_render.live()["commit"]["id"] == OLD


def test_a_client_error_on_the_post_is_reported_with_renders_message(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    real_post = fake_render.handle

    def refuse_post(method, path, query, body, auth):
        if method == "POST":
            fake_render.faults.insert(0, Fault(409, body={"id": "conflict", "message": "a deploy is in progress"}))
        return real_post(method, path, query, body, auth)

    fake_render.handle = refuse_post
    with pytest.raises(RenderApiError, match="error 409 on POST .*/rollback: a deploy is in progress"):
        strategy(fake_render).restore(step_context(tmp_path), OLD)
    assert len(posts(fake_render, "/rollback")) == 1 and not fake_render.created_by("rollback")


# -- the pre-deploy step ---------------------------------------------------------------------------
def test_a_failing_pre_deploy_fails_the_step_and_says_where_to_look(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    fake_render.pre_deploy_command = "echo 'refused: restore txn-x in progress' >&2; exit 3"
    with pytest.raises(RollbackError, match="ended pre_deploy_failed: its pre-deploy command failed"):
        strategy(fake_render).restore(step_context(tmp_path), OLD)
    assert fake_render.pre_deploy_runs[0]["returncode"] == 3
    assert fake_render.live()["commit"]["id"] == NEW


def test_the_pre_deploy_command_runs_with_the_deploys_commit(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    marker = tmp_path / "pre-deploy.txt"
    fake_render.pre_deploy_command = f'echo "$RENDER_GIT_COMMIT" > {marker}; sleep 0.3'
    strategy(fake_render).restore(step_context(tmp_path), OLD)
    assert marker.read_text().strip() == OLD and fake_render.pre_deploy_runs[0]["returncode"] == 0
    assert fake_render.live()["commit"]["id"] == OLD


# -- auto-deploy ----------------------------------------------------------------------------------
def test_auto_deploy_is_off_after_a_rollback_and_the_note_says_how_to_turn_it_on(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    ctx = step_context(tmp_path)
    strategy(fake_render).restore(ctx, OLD)
    patch = [r for r in fake_render.requests if r["method"] == "PATCH"]
    assert [r["body"] for r in patch] == [{"autoDeploy": "no"}]
    assert patch[0]["path"] == f"/v1/services/{fake_render.service_id}"
    assert fake_render.push(NEW) is None and fake_render.live()["commit"]["id"] == OLD  # the next push waits
    notes = Journal(tmp_path / "backup").load(ctx.txn)["notes"]
    assert any("auto-deploy was turned off" in n and '"autoDeploy": "yes"' in n for n in notes)
    assert "status=autodeploy_off" in (tmp_path / "logs" / "rollback.log").read_text()


def test_auto_deploy_is_left_alone_when_told(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    chosen = strategy(fake_render)
    chosen.disable_autodeploy = False
    chosen.restore(step_context(tmp_path), OLD)
    assert not any(r["method"] == "PATCH" for r in fake_render.requests) and fake_render.auto_deploy == "yes"


def test_auto_deploy_that_cannot_be_turned_off_is_a_warning_not_a_failure(fake_render, tmp_path):
    builds_after_old(fake_render, newer=2)
    real = fake_render.handle

    def refuse_patch(method, path, query, body, auth):
        if method == "PATCH":
            fake_render.faults.insert(0, Fault(403, body={"id": "forbidden", "message": "not allowed"}))
        return real(method, path, query, body, auth)

    fake_render.handle = refuse_patch
    ctx = step_context(tmp_path)
    strategy(fake_render).restore(ctx, OLD)
    assert fake_render.live()["commit"]["id"] == OLD and fake_render.auto_deploy == "yes"
    warnings = Journal(tmp_path / "backup").load(ctx.txn)["warnings"]
    assert len(warnings) == 1 and "auto-deploy is still on" in warnings[0] and "not allowed" in warnings[0]
