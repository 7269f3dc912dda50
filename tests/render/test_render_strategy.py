"""The render code strategy against a local fake of Render's API (real paths, payloads, errors)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rollback.errors import RollbackError
from rollback.journal import Journal
from rollback.render import RenderApiError, RenderClient, RenderRateLimited, find_rollback_target
from rollback.resources.code import RenderStrategy
from rollback.restore_steps import StepContext
from tests.render.fake_render import Fault

OLD, NEW = "a" * 40, "b" * 40


def strategy(fake, sleeps=None, timeout=5.0, key=None, retention=5, request_timeout=15.0):
    client = RenderClient(fake.url, key or fake.api_key, fake.service_id,
                          sleep=(sleeps.append if sleeps is not None else (lambda s: None)), timeout=request_timeout)
    return RenderStrategy(client, timeout=timeout, interval=0.01, retention=retention)


def step_context(tmp_path, snapshot=None) -> StepContext:
    journal = Journal(tmp_path / "backup")
    txn = "txn-20260101T000000Z-abcdef"
    journal.create(txn, snapshot_id="20260101T000000Z-abcdef")
    settings = SimpleNamespace(rollback_log=tmp_path / "logs" / "rollback.log")  # all the code step reads
    return StepContext(settings, txn, "code", snapshot or {"app_revision": OLD}, journal)


def history(fake, *, old_at: int, total: int) -> dict:
    """`total` deploys; the good one of OLD at index `old_at` (newest first), NEW live on top."""
    for i in range(total - 1, -1, -1):
        if i == old_at:
            good = fake.add_deploy(OLD, status="live")
        elif i == 0:
            fake.add_deploy(NEW, status="live")
        else:
            fake.add_deploy(f"{i:040x}", status="build_failed" if i % 7 == 0 else "live")
    return good


def test_rollback_follows_the_cursor_and_waits_until_live(fake_render, tmp_path):
    good = history(fake_render, old_at=130, total=150)  # page 2 of 100
    ctx = step_context(tmp_path)
    detail = strategy(fake_render, retention=1000).restore(ctx, OLD)

    reqs = fake_render.requests
    lists = [r for r in reqs if r["path"] == f"/v1/services/{fake_render.service_id}/deploys"]
    assert lists[0]["query"] == {"limit": ["100"]}
    assert lists[1]["query"]["cursor"] and lists[1]["query"]["limit"] == ["100"]
    post = next(r for r in reqs if r["method"] == "POST")
    assert post["path"] == f"/v1/services/{fake_render.service_id}/rollback"
    assert post["body"] == {"deployId": good["id"]}
    new_id = ctx.marks()["render_rollback"]["deploy"]
    polls = [r for r in reqs if r["path"].endswith(f"/deploys/{new_id}")]
    # queued -> pre_deploy_in_progress -> update_in_progress -> live: no build for a rollback
    assert len(polls) == 4
    assert all(r["auth"] == f"Bearer {fake_render.api_key}" for r in reqs)
    assert fake_render.live()["commit"]["id"] == OLD and fake_render.live()["trigger"] == "rollback"
    assert good["id"] in detail and new_id in detail and "live" in detail


def test_a_rerun_follows_the_rollback_it_started(fake_render, tmp_path):
    history(fake_render, old_at=3, total=5)
    ctx = step_context(tmp_path)
    fake_render.rollout_result = "update_in_progress"  # the worker "dies" while Render deploys
    with pytest.raises(RollbackError, match="not live within"):
        strategy(fake_render, timeout=0.05).restore(ctx, OLD)
    fake_render.rollout_result = "live"
    strategy(fake_render).restore(ctx, OLD)
    assert sum(r["method"] == "POST" for r in fake_render.requests) == 1
    assert fake_render.live()["commit"]["id"] == OLD


def test_current_revision_is_the_live_deploys_commit(fake_render):
    history(fake_render, old_at=2, total=4)
    assert strategy(fake_render).current_revision() == (NEW, False)
    assert fake_render.requests[-1]["query"]["status"] == ["live"]


def test_already_live_revision_is_left_alone(fake_render, tmp_path):
    fake_render.add_deploy(OLD, status="live")
    detail = strategy(fake_render).restore(step_context(tmp_path), OLD)
    assert "already live" in detail
    assert not any(r["method"] == "POST" for r in fake_render.requests)


def test_no_deploy_of_the_commit_is_a_clear_error(fake_render):
    history(fake_render, old_at=1, total=3)
    with pytest.raises(RollbackError, match=f"no deploy of commit {'c' * 12} among its 3 deploys"):
        strategy(fake_render).check_available("c" * 40)


def test_only_failed_deploys_of_the_commit_cannot_be_rolled_back_to(fake_render):
    fake_render.add_deploy(OLD, status="build_failed")
    fake_render.add_deploy(NEW, status="live")
    with pytest.raises(RollbackError, match="no successful deploy of commit aaaaaaaaaaaa.*build_failed"):
        find_rollback_target(strategy(fake_render).client, OLD)


def test_wrong_key_is_reported_without_the_key(fake_render):
    wrong = "rnd_wrongKEY_do_not_print"
    with pytest.raises(RenderApiError) as info:
        strategy(fake_render, key=wrong).current_revision()
    assert info.value.status == 401 and "RENDER_API_KEY" in str(info.value)
    assert wrong not in str(info.value) and fake_render.api_key not in str(info.value)


def test_unknown_service_is_a_404(fake_render):
    client = RenderClient(fake_render.url, fake_render.api_key, "srv-nope")
    with pytest.raises(RenderApiError, match="not found \\(404\\).*srv-nope.*service not found") as info:
        client.live_deploy()
    assert info.value.status == 404


def test_rate_limit_waits_as_told_then_succeeds(fake_render):
    fake_render.add_deploy(OLD, status="live")
    fake_render.faults = [Fault(429, {"Retry-After": "2"}), Fault(429, {"Ratelimit-Reset": "1"})]
    sleeps = []
    assert strategy(fake_render, sleeps).current_revision() == (OLD, False)
    assert sleeps == [2.0, 1.0]


def test_long_rate_limit_fails_fast_with_the_hint(fake_render):
    fake_render.faults = [Fault(429, {"Retry-After": "3600"}, {"id": "rate_limit", "message": "slow down"})]
    sleeps = []
    with pytest.raises(RenderRateLimited, match="rate limit reached \\(429\\).*retry after 3600 s") as info:
        strategy(fake_render, sleeps).current_revision()
    assert info.value.retry_after == 3600 and sleeps == []


def test_server_errors_are_retried_then_reported(fake_render):
    fake_render.add_deploy(OLD, status="live")
    fake_render.faults = [Fault(503), Fault(500)]
    sleeps = []
    assert strategy(fake_render, sleeps).current_revision() == (OLD, False)
    assert len(sleeps) == 2
    fake_render.faults = [Fault(502, body={"id": "bad_gateway", "message": "upstream down"})] * 4
    with pytest.raises(RenderApiError, match="Render API error 502 on GET /v1/services/.*/deploys: upstream down"):
        strategy(fake_render).current_revision()


def test_unreachable_api_is_reported(tmp_path):
    client = RenderClient("http://127.0.0.1:9/v1", "k", "srv-x", sleep=lambda s: None)
    with pytest.raises(RenderApiError, match="unreachable"):
        client.live_deploy()


def test_a_failed_rollback_deploy_fails_the_step(fake_render, tmp_path):
    history(fake_render, old_at=2, total=3)
    fake_render.rollout_result = "update_failed"
    with pytest.raises(RollbackError, match="ended update_failed"):
        strategy(fake_render).restore(step_context(tmp_path), OLD)


def test_settings_select_the_render_strategy(env, fake_render):
    from rollback.settings import Settings
    from rollback.resources.code import strategy_for

    s = Settings.from_env(dict(env, CODE_ROLLBACK_STRATEGY="render", RENDER_API_KEY=fake_render.api_key,
                               RENDER_SERVICE_ID=fake_render.service_id, RENDER_API_URL=fake_render.url))
    chosen = strategy_for(s)
    assert isinstance(chosen, RenderStrategy) and chosen.client.api_url == fake_render.url
