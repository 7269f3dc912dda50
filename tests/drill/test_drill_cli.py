"""`drill` at the command line: bad input is one line and exit 2, a busy service exit 3, never a traceback."""

from __future__ import annotations

from rollback.restore import begin_restore
from rollback.snapshot import create_snapshot
from tests.conftest import cli


def _one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_input_is_one_line(env):
    for extra, args, needle in (
        ({"ROLLBACK_DRILL_SCHEDULE": "sometimes"}, ("drill",), "ROLLBACK_DRILL_SCHEDULE: must be hourly, daily"),
        ({"READYZ_TABLES": "users;drop"}, ("drill",), "READYZ_TABLES: expected table[:min_rows]"),
        ({"READYZ_USERS_FILE": "../etc/passwd"}, ("drill",), "READYZ_USERS_FILE: must be a path inside DATA_BASE_DIR"),
        ({}, ("drill", "--snapshot", "not-an-id"), "not-an-id"),
        ({}, ("drill",), "no snapshot"),
    ):
        proc = cli(dict(env, **extra), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle.lower() in _one_line_error(proc).lower()


def test_refused_with_exit_3_while_a_restore_owns_the_service(settings, env):
    entry = create_snapshot(settings)
    begin_restore(settings, entry["id"], reason="busy")
    proc = cli(env, "drill", "--json")
    assert proc.returncode == 3
    assert "drill refused: restore txn-" in _one_line_error(proc)
    assert proc.stdout == ""
