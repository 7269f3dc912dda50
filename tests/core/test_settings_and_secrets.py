"""Settings validation, id validation, and that secrets never reach argv, logs or the journal."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from rollback.errors import ConfigError, InvalidSnapshotId
from rollback.ids import new_snapshot_id, new_txn_id, validate_snapshot_id, validate_txn_id
from rollback.logbook import mask_secrets
from rollback.restore import run_restore_local
from rollback.settings import Settings, parse_database_url
from rollback.snapshot import create_snapshot
from tests import state

BASE = {"DATABASE_URL": "postgresql://u:p@db.example:6543/app"}


def test_defaults(tmp_path):
    s = Settings.from_env(BASE, cwd=tmp_path)
    assert s.data_base_dir == Path("/var/data") and s.backup_dir == Path("/var/tmp/backup")
    assert s.backup_retention == 14 and s.ready_timeout_sec == 90 and s.ready_interval_sec == 10
    assert s.readyz_url == "http://127.0.0.1:5000/readyz"
    assert s.log_dir == tmp_path / "logs"
    assert s.celery_broker_url == s.celery_result_backend == "redis://127.0.0.1:6379/0"
    assert s.app_repo_dir == tmp_path and s.alembic_config == tmp_path / "alembic.ini"
    assert s.database.host == "db.example" and s.database.port == 6543 and s.database.dbname == "app"


def test_app_repo_defaults_to_git_toplevel(app_repo):
    sub = app_repo / "migrations"
    s = Settings.from_env(dict(BASE, PORT="8080"), cwd=sub)
    assert s.app_repo_dir == app_repo and s.readyz_url == "http://127.0.0.1:8080/readyz"


@pytest.mark.parametrize("name, value", [
    ("DATABASE_URL", ""), ("DATABASE_URL", "mysql://u@h/db"), ("DATABASE_URL", "postgresql://u@h/"),
    ("DATABASE_URL", "postgresql://u@h:notaport/db"), ("BACKUP_RETENTION", "0"), ("BACKUP_RETENTION", "x"),
    ("ROLLBACK_READY_TIMEOUT_SEC", "nan"), ("ROLLBACK_READY_INTERVAL_SEC", "0"), ("READYZ_URL", "ftp://x"),
    ("CODE_ROLLBACK_STRATEGY", "svn"), ("PORT", "-1"), ("BACKUP_GZIP_LEVEL", "10"), ("MANIFEST_HMAC_KEY", "short"),
])
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(dict(BASE, **{name: value}))
    assert str(info.value).startswith(f"{name}: ")
    assert "\n" not in str(info.value)


def test_both_url_schemes_and_no_password_in_libpq_argv():
    for url in ("postgresql://u:s3cr%40t@h/db", "postgresql+psycopg://u:s3cr%40t@h/db"):
        target = parse_database_url(url)
        assert target.password == "s3cr@t"
        assert target.libpq_env()["PGPASSWORD"] == "s3cr@t"
        assert "s3cr" not in target.masked_url()


def test_url_options_reach_libpq():
    target = parse_database_url("postgresql://u:pw@h:5432/db?sslmode=require&connect_timeout=5")
    assert target.libpq_env()["PGSSLMODE"] == "require" and target.libpq_env()["PGCONNECT_TIMEOUT"] == "5"
    assert "sslmode='require'" in target.conninfo()
    assert target.sqlalchemy_url().endswith("/db?sslmode=require&connect_timeout=5")


def test_ids_are_generated_and_strictly_validated():
    sid, txn = new_snapshot_id(), new_txn_id()
    assert validate_snapshot_id(sid) == sid and validate_txn_id(txn) == txn
    assert validate_snapshot_id("latest", allow_latest=True) == "latest"
    for bad in ("latest", "../x", "20260101T000000Z-ABCDEF", "20260101T000000Z-abcdef/..", "", None, 5,
                "20260101T000000Z-abcdef\n"):
        with pytest.raises(InvalidSnapshotId):
            validate_snapshot_id(bad)


def test_mask_secrets():
    line = "url=postgresql://app:hunter2@db/x password=hunter2 token: abc123"
    masked = mask_secrets(line)
    assert "hunter2" not in masked and "abc123" not in masked and "app:***@db" in masked


def test_password_never_in_argv_logs_or_journal(settings, env):
    """Run a snapshot and a restore with a password in DATABASE_URL while sampling every process's argv."""
    secret = "Pw-sampled-7f3a9c"
    # trust auth accepts any password, so the password reaches libpq but is never needed.
    with_pw = Settings.from_env(dict(env, DATABASE_URL=env["DATABASE_URL"].replace("postgres@", f"postgres:{secret}@"),
                                     READYZ_URL=settings.readyz_url))
    seen: list[str] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if secret.encode() in cmd:
                    seen.append(cmd.decode(errors="replace"))
            stop.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # Positive control: the sampler does catch a process that carries the secret in argv.
        subprocess.run(["sh", "-c", f"sleep 0.3 # {secret}"], check=True)
        control, seen[:] = list(seen), []
        create_snapshot(with_pw)
        state.bad_deploy(with_pw, with_pw.app_repo_dir)
        doc = run_restore_local(with_pw, "latest", reason="secret check")
    finally:
        stop.set()
        sampler.join()
    assert doc["status"] == "succeeded"
    assert control, "the argv sampler saw nothing: it would not detect a leak"
    assert seen == []
    for path in with_pw.backup_dir.rglob("*.json"):
        assert secret not in path.read_text()
    assert secret not in with_pw.rollback_log.read_text()
