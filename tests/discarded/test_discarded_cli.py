"""The operator's commands: `plan`, `restore --local` (which makes the report in the same process),
`discarded`, `carry-forward` (rows and files, dry run) and their bad input, as child processes."""

from __future__ import annotations

import json

from rollback.journal import Journal
from tests import state
from tests.conftest import cli
from tests.discarded.writes import GroundTruth, keep_writing

PLAN_KEYS = {"code", "alembic", "tables", "data", "path", "estimate_sec", "space"}


def test_plan_discarded_and_carry_forward_commands(live_env, settings):
    env = live_env
    assert cli(env, "snapshot", "--local").returncode == 0
    state.bad_deploy(settings, settings.app_repo_dir)
    truth = GroundTruth.of_bad_deploy()
    keep_writing(settings, truth)

    done = cli(env, "plan", "--snapshot", "latest", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert PLAN_KEYS <= set(plan) and plan["alembic"]["current"] == "0003_bad_deploy"
    text = cli(env, "plan", "--snapshot", "latest")
    assert text.returncode == 0 and "1 migration(s) downgraded" in text.stdout and "uploads/notes-new.txt" in text.stdout

    done = cli(env, "restore", "--snapshot", "latest", "--reason", "bad deploy", "--yes", "--local")
    assert done.returncode == 0, done.stderr
    assert "discarded since the snapshot: 8 inserted" in done.stderr  # 6 users, 1 trip, 1 audit_events row
    txn = Journal(settings.backup_dir).all()[-1]["txn"]

    done = cli(env, "discarded", txn, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    tables = {t["table"]: t for t in summary["tables"]}
    assert (tables["public.users"]["insert"], tables["public.users"]["update"], tables["public.users"]["delete"]) == (
        len(truth.inserted["users"]), len(truth.expected("users")["update"]), 1)
    text = cli(env, "discarded", txn)
    assert text.returncode == 0 and "public.audit_events" in text.stdout and "table created since the snapshot" in text.stdout

    dry = cli(env, "carry-forward", txn, "--table", "users", "--table", "trips", "--op", "insert", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{len(truth.inserted['users']) + 1} row(s) would be applied, 0 skipped" in dry.stdout
    assert not _has_user(settings, truth.inserted["users"][-1])
    done = cli(env, "carry-forward", txn, "--table", "users", "--table", "trips", "--op", "insert", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == len(truth.inserted["users"]) + 1
    assert _has_user(settings, truth.inserted["users"][-1])
    files = cli(env, "carry-forward", txn, "--files")
    assert files.returncode == 0 and f"{len(truth.uploads)} file(s) copied back" in files.stdout
    again = cli(env, "carry-forward", txn, "--files")
    assert f"0 file(s) copied back, {len(truth.uploads)} skipped" in again.stdout  # already there now
    log = settings.rollback_log.read_text()
    assert "action=carry-forward outcome=ok" in log and "step=carry-forward status=dry_run" in log


def test_bad_input_is_one_line_and_exit_2(live_env, settings):
    env = live_env
    for args in (("discarded", "not-a-txn"), ("discarded", "txn-20260101T000000Z-abcdef"),
                 ("carry-forward", "txn-20260101T000000Z-abcdef", "--table", "users"),
                 ("plan", "--snapshot", "nope")):
        done = cli(env, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), done.stderr
    assert cli(env, "snapshot", "--local").returncode == 0
    assert cli(env, "restore", "--snapshot", "latest", "--reason", "r", "--yes", "--local").returncode == 0
    txn = Journal(settings.backup_dir).all()[-1]["txn"]
    done = cli(env, "carry-forward", txn)
    assert done.returncode == 2 and "give --table T" in done.stderr


def _has_user(settings, uid: int) -> bool:
    with state.connect(settings) as conn:
        return conn.execute("select count(*) from users where id = %s", (uid,)).fetchone()[0] == 1
