"""rollback.flask: /readyz served by the protected app's own process, in the app's own setup.

The protected app here is a real module on disk (Flask-SQLAlchemy + Flask-Migrate, psycopg2), migrated
by `flask db upgrade` in a child process, exactly as a deploy would; the test process then builds the app
through the same factory (the "running process") and asks /readyz.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = "db_migrations"  # not ./migrations: proves the directory comes from Flask-Migrate
SECRET = "s3cr3t-value-never-shown"

APP_SOURCE = '''
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


def create_app(readyz_before_migrate=False, **readyz):
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    db.init_app(app)
    if readyz_before_migrate:
        from rollback.flask import init_app
        init_app(app, **readyz)
    Migrate(app, db, directory="{migrations}")
    if not readyz_before_migrate:
        from rollback.flask import init_app
        init_app(app, **readyz)
    return app
'''.format(migrations=MIGRATIONS)

REVISION = '''"""{table}"""
from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))


def downgrade():
    op.drop_table("{table}")
'''


# -- the protected app ----------------------------------------------------------------------------
class ProtectedApp:
    def __init__(self, directory: Path, database_name: str):
        self.dir = directory
        self.db_url = f"postgresql://postgres@127.0.0.1:5432/{database_name}"
        self.database_name = database_name
        self.env = {**os.environ, "DATABASE_URL": self.db_url, "PYTHONPATH": str(ROOT),
                    "FLASK_APP": "protected_app"}
        self.data_dir = directory / "data"

    def flask(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "flask", *args], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def add_revision(self, rev: str, down: str | None, table: str) -> None:
        (self.dir / MIGRATIONS / "versions" / f"{rev}_{table}.py").write_text(
            REVISION.format(rev=rev, down=down, table=table))

    def sql(self, statement: str) -> None:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{self.database_name}", autocommit=True) as c:
            c.execute(statement)

    def create(self, **readyz):
        """The factory, imported afresh: a new process starting on the code as it is now."""
        spec = importlib.util.spec_from_file_location(f"protected_app_{time.monotonic_ns()}",
                                                      self.dir / "protected_app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.create_app(**readyz)


@pytest.fixture(scope="module")
def migrations_template(tmp_path_factory) -> Path:
    """`flask db init` once: Flask-Migrate's own layout (alembic.ini without script_location)."""
    base = tmp_path_factory.mktemp("template")
    (base / "protected_app.py").write_text(APP_SOURCE)
    env = {**os.environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
           "PYTHONPATH": str(ROOT), "FLASK_APP": "protected_app"}
    subprocess.run([sys.executable, "-m", "flask", "db", "init", "-d", MIGRATIONS], cwd=base, env=env,
                   check=True, capture_output=True, timeout=60)
    return base / MIGRATIONS


@pytest.fixture
def protected(tmp_path, database_name, migrations_template, monkeypatch) -> ProtectedApp:
    """Migrated to head 0002 with 3 users, users.json in place; cwd and env as the app's process has."""
    import shutil

    app = ProtectedApp(tmp_path / "app", database_name)
    app.dir.mkdir()
    (app.dir / "protected_app.py").write_text(APP_SOURCE)
    shutil.copytree(migrations_template, app.dir / MIGRATIONS)
    app.add_revision("0001", None, "users")
    app.add_revision("0002", "0001", "trips")
    app.flask("db", "upgrade")
    app.sql("insert into users (name) values ('a'), ('b'), ('c')")
    app.data_dir.mkdir()
    (app.data_dir / "users.json").write_text(json.dumps([{"name": "a"}]))

    monkeypatch.chdir(app.dir)  # Flask-Migrate's relative directory is relative to the cwd
    for name in ("ALEMBIC_CONFIG", "READYZ_ALEMBIC", "READYZ_USERS_FILE", "READYZ_CHECK_TIMEOUT_SEC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", app.db_url)
    monkeypatch.setenv("DATA_BASE_DIR", str(app.data_dir))
    monkeypatch.setenv("READYZ_REQUIRED_ENV", "APP_SECRET")
    monkeypatch.setenv("APP_SECRET", SECRET)
    monkeypatch.setenv("READYZ_TABLES", "users:2,trips")
    return app


def readyz(app) -> tuple[int, dict]:
    response = app.test_client().get("/readyz")
    assert SECRET not in response.get_data(as_text=True)
    return response.status_code, response.get_json()


def failed(body: dict) -> dict[str, str]:
    return {name: check["detail"] for name, check in body["checks"].items() if not check["ok"]}


class Served:
    """The app on a real socket (werkzeug, threaded), as gunicorn would serve it."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.thread.join(5)

    def get(self, path: str) -> tuple[int, str, float]:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                status, body = r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode()
        return status, body, time.monotonic() - started


# -- ready ----------------------------------------------------------------------------------------
def test_ready_over_http_with_flask_migrate_layout(protected):
    alembic_ini = (protected.dir / MIGRATIONS / "alembic.ini").read_text()
    assert "script_location" not in alembic_ini.replace("# ", "")  # Flask-Migrate's layout
    assert not (protected.dir / "migrations").exists()

    app = protected.create()
    readiness = app.extensions["rollback_readyz"]
    assert readiness.heads == ["0002"]
    assert str(protected.dir / MIGRATIONS) in readiness.heads_note

    with Served(app) as server:
        status, body, _ = server.get("/healthz")
        assert (status, body) == (200, "ok")
        status, body, _ = server.get("/readyz")
    assert status == 200, body
    assert SECRET not in body
    result = json.loads(body)
    assert result["ok"] is True
    assert set(result["checks"]) == {"env", "users_file", "database", "alembic"}
    assert result["checks"]["env"]["detail"] == "present: APP_SECRET=***"
    assert "users>=2, trips>=0" in result["checks"]["database"]["detail"]
    assert all(isinstance(c["ms"], float) for c in result["checks"].values())


def test_plain_sqlalchemy_psycopg3_and_alembic_config(app_repo, database_name, monkeypatch, tmp_path):
    """No Flask-SQLAlchemy: the engine comes from DATABASE_URL as given (psycopg 3), the migrations
    from ALEMBIC_CONFIG's script_location."""
    from flask import Flask

    from rollback.flask import init_app

    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database_name}"
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(app_repo / "alembic.ini"), "upgrade", "head"],
                   cwd=app_repo, env={**os.environ, "DATABASE_URL": url}, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    for name in ("READYZ_REQUIRED_ENV", "READYZ_TABLES", "DATA_BASE_DIR", "READYZ_ALEMBIC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("ALEMBIC_CONFIG", str(app_repo / "alembic.ini"))
    app = Flask("plain")
    init_app(app, tables="users")
    status, body = readyz(app)
    assert status == 200, body
    assert body["checks"]["users_file"]["detail"] == "skipped (DATA_BASE_DIR not set)"
    assert "postgresql+psycopg" in str(app.extensions["rollback_readyz"]._own_engine.url)


# -- not ready ------------------------------------------------------------------------------------
def test_missing_env_var_names_it_and_never_shows_values(protected, monkeypatch):
    monkeypatch.setenv("READYZ_REQUIRED_ENV", "APP_SECRET,MAIL_PASSWORD")
    monkeypatch.delenv("MAIL_PASSWORD", raising=False)
    status, body = readyz(protected.create())
    assert status == 503 and body["ok"] is False
    assert failed(body) == {"env": "missing: MAIL_PASSWORD; present: APP_SECRET=***"}


def test_corrupt_users_file(protected):
    (protected.data_dir / "users.json").write_text('{"users": [')
    status, body = readyz(protected.create())
    assert status == 503
    assert list(failed(body)) == ["users_file"]
    assert "not valid JSON" in failed(body)["users_file"]


def test_missing_table_and_too_few_rows(protected, monkeypatch):
    monkeypatch.setenv("READYZ_TABLES", "users:2,invoices")
    status, body = readyz(protected.create())
    assert (status, failed(body)) == (503, {"database": "table invoices does not exist"})

    monkeypatch.setenv("READYZ_TABLES", "users:5")
    status, body = readyz(protected.create())
    assert (status, failed(body)) == (503, {"database": "table users has 3 rows, at least 5 required"})


def test_locked_table_fails_within_the_deadline(protected):
    app = protected.create()
    with psycopg.connect(protected.db_url) as locker:  # holds the lock until the block ends
        locker.execute("lock table users in access exclusive mode")
        started = time.monotonic()
        status, body = readyz(app)
        elapsed = time.monotonic() - started
    assert status == 503 and elapsed < 2.0
    assert failed(body) == {"database": f"database {protected.database_name}: no answer within 1000 ms (locked?)"}


def test_pooled_connections_killed_under_the_app_are_replaced(protected):
    """A restore swaps the database and ends every session: the app's pool (no pre-ping) holds dead
    connections, and the next probe must still see the database as it is now."""
    app = protected.create()
    client = app.test_client()
    assert client.get("/readyz").status_code == 200  # the app's pool now holds connections
    protected.sql("select pg_terminate_backend(pid) from pg_stat_activity "
                  f"where datname = '{protected.database_name}' and pid <> pg_backend_pid()")
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()


def test_database_at_another_revision(protected):
    protected.flask("db", "downgrade", "0001")
    status, body = readyz(protected.create())
    assert status == 503
    assert failed(body)["alembic"].startswith("database at 0001, but this process loaded head 0002")


def test_old_process_is_not_ready_after_a_migration_it_never_loaded(protected):
    """The process keeps the head it started with: the database moved on to a migration added to the
    directory afterwards (new code), so this process runs old code against a new schema."""
    running = protected.create()
    assert readyz(running)[0] == 200

    protected.add_revision("0003", "0002", "invoices")
    protected.flask("db", "upgrade")  # the new code's migration, run by the deploy

    status, body = readyz(running)
    assert status == 503
    assert failed(body) == {"alembic": "database at 0003, but this process loaded head 0002 at start-up "
                                       "(code and schema differ: restart or redeploy)"}
    restarted = protected.create()
    assert readyz(restarted)[0] == 200


def test_unreachable_database_answers_within_the_deadline(protected, monkeypatch):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:pw-{SECRET}@127.0.0.1:{port}/app")
    with Served(protected.create()) as server:
        status, body, elapsed = server.get("/readyz")
    assert status == 503 and elapsed < 2.0
    assert SECRET not in body
    problems = failed(json.loads(body))
    assert set(problems) == {"database", "alembic"}
    assert problems["database"].startswith("database app unreachable:")


def test_hanging_database_times_out_instead_of_hanging(protected, monkeypatch):
    """A server that accepts connections and never answers: the probe still answers in time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/app")
        app = protected.create(deadline_sec=1.0)
        with Served(app) as server:
            for _ in range(3):  # repeated probes neither hang nor pile up threads
                status, body, elapsed = server.get("/readyz")
                assert status == 503 and elapsed < 1.8
        problems = failed(json.loads(body))
    assert set(problems) == {"database", "alembic"}
    assert all("timed out" in d or "still waiting" in d for d in problems.values())


# -- set-up ---------------------------------------------------------------------------------------
def test_init_app_before_migrate_fails_the_alembic_check_clearly(protected, monkeypatch):
    status, body = readyz(protected.create(readyz_before_migrate=True))
    assert status == 503
    assert failed(body) == {"alembic": "no migrations found at start-up; call init_app after "
                                       "Migrate(app, db) or pass migrations_dir="}

    monkeypatch.setenv("READYZ_ALEMBIC", "off")
    status, body = readyz(protected.create(readyz_before_migrate=True))
    assert status == 200
    assert body["checks"]["alembic"]["detail"] == "disabled (READYZ_ALEMBIC=off)"


def test_explicit_arguments_and_prefix(protected):
    app = protected.create(readyz_before_migrate=True, migrations_dir=MIGRATIONS, required_env=["APP_SECRET"],
                           users_file="none", tables="trips:1", url_prefix="/ops")
    client = app.test_client()
    assert client.get("/readyz").status_code == 404
    response = client.get("/ops/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert failed(body) == {"database": "table trips has 0 rows, at least 1 required"}
    assert body["checks"]["users_file"]["detail"] == "disabled (READYZ_USERS_FILE=none)"


def test_invalid_configuration_fails_its_check_in_one_line(protected, monkeypatch):
    monkeypatch.setenv("READYZ_TABLES", "users; drop table users")
    status, body = readyz(protected.create())
    assert status == 503
    assert failed(body) == {"database": "READYZ_TABLES: 'users; drop table users' is not a table name "
                                        "(table or schema.table)"}


def test_existing_routes_are_kept(protected, caplog):
    from flask import Flask

    from rollback.flask import init_app

    app = Flask("has_healthz")
    app.add_url_rule("/healthz", "own_healthz", lambda: "mine")
    with caplog.at_level("WARNING"):
        init_app(app, migrations_dir=protected.dir / MIGRATIONS)
    assert app.test_client().get("/healthz").get_data(as_text=True) == "mine"
    assert app.test_client().get("/readyz").status_code == 200
    assert "/healthz is already served by the app" in caplog.text


def test_import_needs_only_flask_and_sqlalchemy():
    code = textwrap.dedent("""
        import sys
        import rollback.flask
        heavy = ("celery", "kombu", "redis", "psycopg", "psycopg2", "flask_admin", "flask_wtf", "alembic",
                 "zstandard", "tasks", "web", "manage")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
