"""The audit trail of privileged actions (hardening): who, from where, what, with what outcome.

The web adapter writes AUDIT lines for every console and API action (tests/web). This file tests
`rollback.logbook.audit` itself and that the CLI writes one AUDIT line per privileged command.
"""

from __future__ import annotations

import getpass

import pytest

from rollback import logbook
from rollback.snapshot import create_snapshot
from tests.conftest import cli


def test_audit_line_names_who_where_what_and_outcome(tmp_path):
    log = tmp_path / "rollback.log"
    line = logbook.audit(log, "alice via sudo", "local", "restore", "refused", snapshot="latest",
                         error="refused: restore txn-x in progress", url="postgresql://u:hunter2@db/app")
    written = log.read_text().strip()
    assert written.endswith(line)
    assert 'AUDIT who="alice via sudo" addr=local action=restore outcome=refused snapshot=latest' in written
    assert "hunter2" not in written and "postgresql://u:***@db/app" in written
    assert (log.stat().st_mode & 0o777) == 0o600


def test_local_operator_names_the_sudo_user():
    me = getpass.getuser()
    assert logbook.local_operator({}) == me
    assert logbook.local_operator({"SUDO_USER": "alice"}) == ("alice via sudo" if me != "alice" else me)


def test_cli_privileged_actions_are_audited(settings, live_env):
    create_snapshot(settings)
    for args in (["snapshot", "--local"], ["restore", "--snapshot", "latest", "--reason", "audit", "--yes", "--local"],
                 ["prune"]):
        done = cli(live_env, *args)
        assert done.returncode == 0, done.stderr
    lines = [line for line in settings.rollback_log.read_text().splitlines() if " AUDIT " in line]
    who = logbook.local_operator()
    for action in ("snapshot", "restore", "prune"):
        assert any(f"action={action}" in line and f"who={who}" in line and "addr=local" in line for line in lines), \
            (action, lines)
