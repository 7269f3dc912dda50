"""`python -m manage.rollback check` as a child process: green on a healthy setup, and each broken part of
the configuration is one FAIL line naming it (exit 1), with no secret in the output."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests import state
from tests.canary.servers import ScriptedReadyz
from tests.conftest import cli, git

CHECK_NAMES = ["database", "pg_dump", "pg_restore", "migrations", "alembic_revision", "alembic_command", "code",
               "data_dir", "backup_dir", "remote", "readyz", "app_restart"]


def run_check(env: dict) -> tuple[int, dict[str, dict], str]:
    """(exit code, checks by name from --json, the text output)."""
    as_json = cli(env, "check", "--json")
    text = cli(env, "check")
    assert "Traceback" not in as_json.stderr + text.stderr, as_json.stderr + text.stderr
    assert as_json.returncode == text.returncode
    checks = {c["name"]: c for c in json.loads(as_json.stdout)}
    return as_json.returncode, checks, text.stdout


def failing(checks: dict[str, dict]) -> set[str]:
    return {name for name, c in checks.items() if not c["ok"]}


def test_green_on_a_healthy_setup_and_no_secret_shown(live_env, settings):
    # Postgres trusts local connections, so a password in the URL is accepted and must never be shown.
    env = dict(live_env, DATABASE_URL=live_env["DATABASE_URL"].replace("postgres@", "postgres:Sup3rSecretPw@"))
    code, checks, text = run_check(env)
    assert code == 0, text
    assert list(checks) == CHECK_NAMES
    assert all(set(c) == {"name", "ok", "level", "detail"} for c in checks.values())
    assert failing(checks) == set()
    assert checks["app_restart"] == {"name": "app_restart", "ok": True, "level": "warn",
                                     "detail": "not set: after a restore the app keeps running the replaced code"}
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines] == [["warn" if n in ("app_restart", "remote") else "ok", n]
                                                          for n in CHECK_NAMES]
    assert "0002_trips (the head)" in checks["alembic_revision"]["detail"]
    assert "HTTP 200" in checks["readyz"]["detail"]
    assert "Sup3rSecretPw" not in text and ":***@" in checks["database"]["detail"]


def test_database_unreachable(live_env, settings):
    code, checks, _ = run_check(dict(live_env, DATABASE_URL="postgresql://postgres:pw@127.0.0.1:1/app"))
    assert code == 1 and failing(checks) == {"database", "alembic_revision"}
    assert "unreachable" in checks["database"]["detail"] and "pw" not in checks["database"]["detail"]
    assert checks["pg_dump"]["level"] == "warn" and "server version unknown" in checks["pg_dump"]["detail"]


def test_wrong_alembic_config(live_env, settings, tmp_path):
    code, checks, text = run_check(dict(live_env, ALEMBIC_CONFIG=str(tmp_path / "nowhere" / "alembic.ini")))
    assert code == 1
    assert failing(checks) == {"migrations", "alembic_revision"}
    assert "does not exist" in checks["migrations"]["detail"]
    assert any(line.startswith("FAIL  migrations") for line in text.splitlines())


def test_database_revision_unknown_to_the_migrations(live_env, settings):
    with state.connect(settings) as conn:
        conn.execute("update alembic_version set version_num = '9f9f_hotfix_by_hand'")
    code, checks, _ = run_check(live_env)
    assert code == 1
    # The app's own /readyz sees the mismatch too.
    assert failing(checks) == {"alembic_revision", "readyz"}
    assert "9f9f_hotfix_by_hand, unknown to the migrations" in checks["alembic_revision"]["detail"]


def test_uncommitted_changes_in_the_app_repo(live_env, settings):
    with open(settings.app_repo_dir / "alembic.ini", "a") as ini:
        ini.write("# edited on the server\n")
    code, checks, _ = run_check(live_env)
    assert code == 1 and failing(checks) == {"code"}
    assert "uncommitted changes to tracked files (alembic.ini)" in checks["code"]["detail"]


def test_app_repo_dir_not_a_git_checkout(live_env, settings, tmp_path):
    plain = tmp_path / "not-a-checkout"
    plain.mkdir()
    code, checks, _ = run_check(dict(live_env, APP_REPO_DIR=str(plain)))
    assert code == 1 and failing(checks) == {"code"}
    assert "cannot read the git revision" in checks["code"]["detail"]


def test_backup_dir_not_writable(live_env, settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("BACKUP_DIR cannot be created below a regular file")
    code, checks, _ = run_check(dict(live_env, BACKUP_DIR=str(blocker / "backup")))
    assert code == 1 and failing(checks) == {"backup_dir"}
    assert "is not a directory" in checks["backup_dir"]["detail"]


def test_readyz_unreachable_or_not_200(live_env, settings):
    code, checks, _ = run_check(dict(live_env, READYZ_URL="http://127.0.0.1:9/readyz"))
    assert code == 1 and failing(checks) == {"readyz"}
    assert "unreachable" in checks["readyz"]["detail"]

    server = ScriptedReadyz("fail")
    try:
        code, checks, _ = run_check(dict(live_env, READYZ_URL=server.url))
    finally:
        server.stop()
    assert code == 1 and failing(checks) == {"readyz"}
    assert checks["readyz"]["detail"].endswith('HTTP 503: {"ok": false}')


def test_app_restart_command_not_found_or_found(live_env, settings):
    code, checks, _ = run_check(dict(live_env, APP_RESTART_COMMAND="/opt/nowhere/restart-app --graceful"))
    assert code == 1 and failing(checks) == {"app_restart"}
    assert "/opt/nowhere/restart-app not found" in checks["app_restart"]["detail"]

    code, checks, _ = run_check(dict(live_env, APP_RESTART_COMMAND="SIGNAL=HUP true restart"))
    assert code == 0 and checks["app_restart"]["level"] == "ok"
    assert checks["app_restart"]["detail"].startswith("/") and "true" in checks["app_restart"]["detail"]


def test_in_place_with_a_flask_env_py_needs_alembic_command(live_env, settings):
    repo = settings.app_repo_dir
    env_py = repo / "migrations" / "env.py"
    env_py.write_text("from flask import current_app\n" + env_py.read_text())
    git(repo, "commit", "-q", "-am", "Flask-Migrate env.py")
    in_place = dict(live_env, DB_RESTORE_STRATEGY="in-place")

    code, checks, _ = run_check(in_place)
    assert code == 1 and failing(checks) == {"alembic_command"}
    assert "belongs to Flask-Migrate" in checks["alembic_command"]["detail"]
    assert "set ALEMBIC_COMMAND" in checks["alembic_command"]["detail"]

    # The app's own Alembic, run with the configured DATABASE_URL, agrees with the database and the migrations.
    command = f"{sys.executable} -m alembic -c {repo / 'alembic.ini'}"
    code, checks, _ = run_check(dict(in_place, ALEMBIC_COMMAND=command))
    assert code == 0, checks["alembic_command"]
    assert "current 0002_trips, heads 0002_trips" in checks["alembic_command"]["detail"]

    code, checks, _ = run_check(dict(in_place, ALEMBIC_COMMAND="/opt/nowhere/flask --app app db"))
    assert code == 1 and failing(checks) == {"alembic_command"}
    assert "/opt/nowhere/flask not found" in checks["alembic_command"]["detail"]


def test_data_dir_with_a_fifo(live_env, settings):
    os.mkfifo(settings.data_base_dir / "uploads" / "pipe")
    code, checks, _ = run_check(live_env)
    assert code == 1 and failing(checks) == {"data_dir"}
    assert "uploads/pipe: a device, FIFO or socket" in checks["data_dir"]["detail"]


def test_bad_setting_is_one_line_exit_2(live_env):
    done = cli(dict(live_env, BACKUP_RETENTION="zero"), "check")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: BACKUP_RETENTION: must be an integer, got 'zero'"]


def test_a_flask_migrate_app_through_its_own_flask_db(env, tmp_path, database_name):
    """The real layout (migrations/alembic.ini without script_location, env.py needing current_app) and
    the app's own `flask db current|heads`, given DATABASE_URL exactly as configured."""
    import shlex

    pytest.importorskip("flask_migrate")
    pytest.importorskip("psycopg2")
    from tests.core.flask_migrate_app import create_repo, flask_db, flask_db_command

    repo = tmp_path / "microblog"
    url = f"postgresql://postgres@127.0.0.1:5432/{database_name}"  # the app refuses any other scheme
    create_repo(repo, url)
    flask_db(repo, url, "upgrade")
    readyz = ScriptedReadyz("ok")
    app_env = dict(env, DATABASE_URL=url, APP_REPO_DIR=str(repo), READYZ_URL=readyz.url,
                   ALEMBIC_CONFIG=str(repo / "migrations" / "alembic.ini"), DB_RESTORE_STRATEGY="in-place")
    try:
        code, checks, _ = run_check(app_env)
        assert code == 1 and failing(checks) == {"alembic_command"}
        assert "belongs to Flask-Migrate" in checks["alembic_command"]["detail"]

        command = shlex.join(flask_db_command(repo))
        code, checks, _ = run_check(dict(app_env, ALEMBIC_COMMAND=command))
        assert code == 0, checks["alembic_command"]
        assert "current 0002_posts, heads 0002_posts" in checks["alembic_command"]["detail"]
    finally:
        readyz.stop()
