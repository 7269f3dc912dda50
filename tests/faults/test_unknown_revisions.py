"""Item 7: Alembic revisions the deployed code does not know.

- A snapshot whose revision the deployed code does not know: refused at preflight, before anything
  changes, with a message that names the revision and what to do (CLI: exit 1, one line).
- A database at a head the deployed code does not know (a hotfix applied by hand, a migration of a
  newer release): the swap strategy does not need a downgrade and restores; the in-place strategy
  takes the documented clean-slate fallback, logged as `status=fallback method=clean-slate`.
Either way the result is the snapshot's state, and the previous state is kept.
"""

from __future__ import annotations

import pytest

from rollback import restore as core
from rollback.errors import StepFailed
from rollback.journal import Journal
from tests import state
from tests.conftest import cli, git
from tests.faults.conftest import COMPONENTS, _always_ready, build_scenario, previous_state_lost


def test_snapshot_at_a_revision_the_code_does_not_know_is_refused(settings, live_env, figures):
    case = figures.case(7, "snapshot at an Alembic revision unknown to the deployed code")
    scenario = build_scenario(settings)  # `bad` is at 0003_bad_deploy
    # The bad deploy is rolled back in code only: the deployed code no longer has 0003_bad_deploy.
    git(settings.app_repo_dir, "reset", "-q", "--hard", scenario.good["app_revision"])
    before = scenario.live()
    done = cli(live_env, "restore", "--snapshot", scenario.bad["id"], "--reason", "unknown revision", "--yes",
               "--local")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    message = done.stdout + done.stderr
    assert "Alembic revision 0003_bad_deploy is unknown to the deployed code" in message, message
    assert "refusing to restore a schema it cannot manage" in message
    txn = Journal(settings.backup_dir).all()[-1]
    assert txn["steps"]["preflight"]["status"] == "failed"
    assert {txn["steps"][s]["status"] for s in ("db", "data", "code", "readyz")} == {"pending"}
    assert scenario.live() == before
    case.run("refused at preflight, nothing changed")


@pytest.mark.parametrize("strategy", ["swap", "in-place"])
def test_database_at_an_unknown_head(strategy, settings, figures):
    case = figures.case(7, f"database at an unknown Alembic head ({strategy})")
    scenario = build_scenario(settings)
    with state.connect(settings) as conn:
        conn.execute("update alembic_version set version_num = '9f9f_hotfix_by_hand'")
        conn.execute("insert into users (email, name) values ('hotfix@example.com', 'Hotfix')")
    previous = dict(scenario.live())
    s = settings.with_overrides(db_restore_strategy=strategy)
    doc = core.run_restore_local(s, scenario.good["id"], reason=f"unknown head ({strategy})")
    # the in-place fallback to a clean slate is a degraded success, reported as such
    assert doc["status"] == ("succeeded_with_warnings" if strategy == "in-place" else "succeeded"), doc
    assert scenario.classify() == dict.fromkeys(COMPONENTS, "good")
    log = settings.rollback_log.read_text()
    fallback = f"id={doc['txn']} step=db status=fallback method=clean-slate"
    if strategy == "in-place":
        assert fallback in log and "9f9f_hotfix_by_hand is unknown to the deployed code" in log
        assert doc["steps"]["db"]["detail"].startswith("clean-slate")
        outcome = "clean-slate fallback, logged; snapshot state"
    else:
        assert fallback not in log
        outcome = "restored (no downgrade needed); snapshot state"
    lost = previous_state_lost(settings, doc["txn"], previous)
    case.run(outcome, data_lost=lost)
    assert lost == 0


def test_database_with_two_heads_one_unknown(settings, figures):
    """alembic_version with two rows (a branch), one unknown: in-place falls back; swap restores."""
    case = figures.case(7, "database with two Alembic heads, one unknown (in-place)")
    scenario = build_scenario(settings)
    with state.connect(settings) as conn:
        conn.execute("alter table alembic_version drop constraint if exists alembic_version_pkc")
        conn.execute("insert into alembic_version (version_num) values ('abcd_branch_head')")
    s = settings.with_overrides(db_restore_strategy="in-place")
    doc = core.run_restore_local(s, scenario.good["id"], reason="two heads")
    assert doc["status"] == "succeeded_with_warnings" and scenario.classify() == dict.fromkeys(COMPONENTS, "good")
    assert any("clean slate" in w for w in doc["warnings"])
    assert doc["steps"]["db"]["detail"].startswith("clean-slate")
    case.run("clean-slate fallback; snapshot state")


def test_unknown_snapshot_revision_through_resume_after_deploying_it(settings, live_env):
    """The documented way out: deploy code that knows the revision, then resume."""
    scenario = build_scenario(settings)
    bad_code = scenario.bad["app_revision"]
    git(settings.app_repo_dir, "reset", "-q", "--hard", scenario.good["app_revision"])
    ready = settings.with_overrides(readyz_url=_always_ready().url)
    with pytest.raises(StepFailed, match="unknown to the deployed code"):
        core.run_restore_local(ready, scenario.bad["id"], reason="needs the newer code")
    txn = Journal(settings.backup_dir).all()[-1]["txn"]
    git(settings.app_repo_dir, "reset", "-q", "--hard", bad_code)
    done = cli(dict(live_env, READYZ_URL=_always_ready().url), "resume", txn, "--local")  # bad's readyz fails
    assert done.returncode == 0, done.stdout + done.stderr
    assert scenario.classify() == dict.fromkeys(COMPONENTS, "bad")
