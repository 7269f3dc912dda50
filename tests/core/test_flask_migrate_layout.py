"""A Flask-Migrate app (real `flask db init` layout, psycopg2 `postgresql://` URL): its migrations are
read, preflight passes, and the in-place restore downgrades through ALEMBIC_COMMAND in the app's own
environment; without ALEMBIC_COMMAND the restore falls back to a clean slate and says so."""

from __future__ import annotations

import configparser
import subprocess
import sys

import pytest

from rollback import migrations_info
from rollback.journal import Journal
from rollback.restore import abandon, begin_restore, restore_summary, run_restore_local, run_step
from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import REDIS_URL, ReadyzServer
from tests.core.flask_migrate_app import bad_deploy, create_repo, flask_db, flask_db_command, seed

pytest.importorskip("flask_migrate", reason="pip install Flask-SQLAlchemy Flask-Migrate psycopg2-binary")
pytest.importorskip("psycopg2", reason="pip install psycopg2-binary")


@pytest.fixture
def microblog(tmp_path, database_name, data_dir):
    """Settings for the microblog app at 0002_posts with rows, and a live /readyz server."""
    repo = tmp_path / "microblog"
    url = f"postgresql://postgres@127.0.0.1:5432/{database_name}"
    create_repo(repo, url)
    flask_db(repo, url, "upgrade")
    settings = Settings.from_env({
        "DATABASE_URL": url, "DATA_BASE_DIR": str(data_dir), "BACKUP_DIR": str(tmp_path / "backup"),
        "APP_REPO_DIR": str(repo), "ALEMBIC_CONFIG": str(repo / "migrations" / "alembic.ini"),
        "LOG_DIR": str(tmp_path / "logs"), "CELERY_BROKER_URL": REDIS_URL, "CELERY_RESULT_BACKEND": REDIS_URL,
        "ROLLBACK_READY_TIMEOUT_SEC": "20", "ROLLBACK_READY_INTERVAL_SEC": "0.2", "DB_RESTORE_STRATEGY": "in-place",
    })
    with state.connect(settings) as conn:
        seed(conn)
    server = ReadyzServer(settings)
    server.start()
    try:
        yield settings.with_overrides(readyz_url=server.url)
    finally:
        server.stop()


def test_flask_migrate_layout_is_read_and_preflight_passes(microblog):
    ini = microblog.alembic_config
    parser = configparser.ConfigParser()
    parser.read(ini)
    assert not parser.has_option("alembic", "script_location")  # really Flask-Migrate's layout
    assert "current_app" in (ini.parent / "env.py").read_text()
    plain = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), "heads"], capture_output=True,
                           text=True, cwd=ini.parent)
    assert plain.returncode != 0 and "script_location" in plain.stdout + plain.stderr  # the old refusal

    assert migrations_info.code_heads(microblog) == ["0002_posts"]
    assert migrations_info.is_known_revision(microblog, "0001_users")
    assert migrations_info.is_known_revision(microblog, "0002_posts")
    assert migrations_info.is_known_revision(microblog, None)
    assert not migrations_info.is_known_revision(microblog, "ffffdeadbeef")
    from web.readyz import check_alembic

    assert check_alembic(microblog) == "database at 0002_posts, code head 0002_posts"

    snap = create_snapshot(microblog)
    assert snap["alembic_revision"] == "0002_posts"
    txn = begin_restore(microblog, snap["id"], reason="preflight only")["txn"]
    result = run_step(microblog, txn, "preflight")
    assert result["status"] == "ok" and "alembic revision known" in result["detail"]
    abandon(microblog, txn, "test: preflight only")


def test_missing_default_ini_names_the_flask_migrate_location(microblog):
    wrong = microblog.with_overrides(alembic_config=microblog.app_repo_dir / "alembic.ini")
    with pytest.raises(Exception) as info:
        migrations_info.code_heads(wrong)
    assert "migrations/alembic.ini" in str(info.value)


def test_in_place_restore_downgrades_through_alembic_command(microblog, tmp_path, monkeypatch):
    settings = microblog.with_overrides(alembic_command=tuple(flask_db_command(microblog.app_repo_dir)))
    before = state.capture(settings)
    snap = create_snapshot(settings)
    with state.connect(settings) as conn:
        bad_deploy(settings.app_repo_dir, settings.database_url, conn)
    assert state.alembic_version(settings) == "0003_followers"
    downgrade_trace, url_trace = tmp_path / "downgrade.trace", tmp_path / "url.trace"
    monkeypatch.setenv("MIGRATION_TRACE_FILE", str(downgrade_trace))
    monkeypatch.setenv("MICROBLOG_URL_TRACE", str(url_trace))

    doc = run_restore_local(settings, "latest", reason="flask-migrate downgrade")

    assert doc["status"] == "succeeded", doc
    assert doc["warnings"] == []
    assert doc["marks"]["db_revision_before"] == "0003_followers"
    assert doc["marks"]["db_revision_after_downgrade"] == "0002_posts"
    assert doc["marks"]["db_downgrade_command"].endswith("-m flask --app microblog db downgrade 0002_posts")
    assert downgrade_trace.read_text() == "downgrade 0003_followers\n"
    # The app's child got DATABASE_URL exactly as configured: postgresql:// (psycopg2), not rewritten.
    assert set(url_trace.read_text().split()) == {"postgresql"}
    after = state.capture(settings)
    assert after["schema"] == before["schema"] and after["rows"] == before["rows"]
    assert after["head"] == snap["app_revision"] and after["alembic"] == "0002_posts"
    assert "status=fallback" not in settings.rollback_log.read_text()


def test_without_alembic_command_the_fallback_is_a_warning(microblog, tmp_path, monkeypatch):
    before = state.capture(microblog)
    create_snapshot(microblog)
    with state.connect(microblog) as conn:
        bad_deploy(microblog.app_repo_dir, microblog.database_url, conn)
    downgrade_trace = tmp_path / "downgrade.trace"
    monkeypatch.setenv("MIGRATION_TRACE_FILE", str(downgrade_trace))

    doc = run_restore_local(microblog, "latest", reason="no alembic command")

    assert doc["status"] == "succeeded_with_warnings", doc
    summary = restore_summary(doc)
    assert summary["status"] == "succeeded_with_warnings"
    [warning] = summary["warnings"]
    assert "clean slate" in warning and "no script_location" in warning and "set ALEMBIC_COMMAND" in warning
    assert not downgrade_trace.exists()  # no downgrade ran: the data is still right, by the clean slate
    after = state.capture(microblog)
    assert after["schema"] == before["schema"] and after["rows"] == before["rows"]
    assert "step=db status=fallback method=clean-slate" in microblog.rollback_log.read_text()
    assert Journal(microblog.backup_dir).load(doc["txn"])["status"] == "succeeded_with_warnings"
