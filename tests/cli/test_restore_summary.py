"""A degraded restore is visible in the CLI: SUCCEEDED_WITH_WARNINGS, its warnings and notes after the step
table, exit 0 (the work is done; the status word and the warnings say it was not the normal path)."""

from __future__ import annotations

import json

from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import cli


def test_clean_slate_fallback_is_reported_with_its_warning(live_env, settings):
    snap = create_snapshot(settings)
    with state.connect(settings) as conn:  # a hotfix applied by hand: no downgrade path from here
        conn.execute("update alembic_version set version_num = '9f9f_hotfix_by_hand'")
    env = dict(live_env, DB_RESTORE_STRATEGY="in-place")

    done = cli(env, "restore", "--snapshot", snap["id"], "--reason", "manual", "--yes", "--local")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith(f"of {snap['id']}: SUCCEEDED_WITH_WARNINGS (reason: manual)")
    table_end = max(i for i, line in enumerate(lines) if line.startswith("  readyz"))
    after = lines[table_end + 1:]
    assert after and after[0].startswith("warning: database restored from a clean slate")
    assert "9f9f_hotfix_by_hand" in after[0]
    assert any(line.startswith("note: ") for line in after[1:])  # APP_RESTART_COMMAND is not set
    assert state.alembic_version(settings) == "0002_trips"

    status = cli(env, "status")
    assert status.returncode == 0 and status.stdout == done.stdout  # read back from the journal
    summary = json.loads(cli(env, "status", "--json").stdout)
    assert summary["status"] == "succeeded_with_warnings"
    assert summary["warnings"] == [after[0].removeprefix("warning: ")]
    assert summary["notes"] and all(f"note: {n}" in done.stdout for n in summary["notes"])
