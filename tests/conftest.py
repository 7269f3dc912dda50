"""Shared fixtures: a fresh Postgres database per test, a git repo holding the target app, a data dir,
settings pointing at all of them, a /readyz server, and Celery on a Redis DB of the tests' own.

Everything is real: Postgres on 127.0.0.1:5432, Redis on 127.0.0.1:6379, git, tar, pg_dump.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests import state

pytest_plugins = ("celery.contrib.pytest",)

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
def _claim_redis_db() -> int:
    """A Redis DB number of this test session's own: two pytest runs on one machine (a developer's and
    CI's, or parallel sessions) must not consume each other's Celery tasks or flush each other's DB.
    The claim is an flock held for the life of the process (released by the kernel at exit)."""
    if os.environ.get("TEST_REDIS_DB"):
        return int(os.environ["TEST_REDIS_DB"])
    import fcntl

    for number in range(1, 16):
        if number == 14:  # the demo's
            continue
        fd = os.open(f"/tmp/rollback-tests-redis-db-{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _CLAIMS.append(fd)
        return number
    raise RuntimeError("no free Redis DB number for the tests (15 pytest sessions at once?)")


_CLAIMS: list[int] = []
REDIS_DB = _claim_redis_db()
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN, autocommit=True)


def drop_databases(prefix: str) -> None:
    with _admin() as conn:
        names = [r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                            (prefix.replace("_", r"\_") + "%",))]
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_name():
    """A fresh, empty database; it and any pre-restore copies are dropped afterwards."""
    name = f"rbtest_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    drop_databases(name)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def app_repo(tmp_path) -> Path:
    """A git repo holding the protected app's alembic.ini + migrations, one commit."""
    repo = tmp_path / "app"
    repo.mkdir()
    shutil.copy(ROOT / "alembic.ini", repo / "alembic.ini")
    shutil.copytree(ROOT / "migrations", repo / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".gitignore").write_text("__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "tests@example.com")
    git(repo, "config", "user.name", "tests")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app v1")
    return repo


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "var-data"
    state.populate_data_dir(d)
    return d


@pytest.fixture
def env(tmp_path, database_name, app_repo, data_dir) -> dict:
    """The environment a deployment would have, pointing at this test's resources."""
    return {
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database_name}",
        "DATA_BASE_DIR": str(data_dir),
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_RETENTION": "14",
        "APP_REPO_DIR": str(app_repo),
        "ALEMBIC_CONFIG": str(app_repo / "alembic.ini"),
        "LOG_DIR": str(tmp_path / "logs"),
        "READYZ_URL": "http://127.0.0.1:9/readyz",
        "CELERY_BROKER_URL": REDIS_URL,
        "CELERY_RESULT_BACKEND": REDIS_URL,
        "ROLLBACK_READY_TIMEOUT_SEC": "20",
        "ROLLBACK_READY_INTERVAL_SEC": "0.2",
    }


@pytest.fixture
def settings(env, app_repo):
    """Settings for a migrated, populated app database, with a live /readyz server."""
    from rollback.settings import Settings

    base = Settings.from_env(env)
    state.migrate(base, "head")
    state.seed_rows(base)
    server = ReadyzServer(base)
    server.start()
    try:
        yield base.with_overrides(readyz_url=server.url)
    finally:
        server.stop()


class ReadyzServer:
    """The real web app (web:create_app) served by werkzeug in a thread."""

    def __init__(self, settings):
        from werkzeug.serving import make_server

        from web import create_app

        self.httpd = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/readyz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.thread.join(5)


# -- Celery -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_db():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def celery_app(redis_db):
    """Our real app (tasks.app) pointed at the tests' Redis DB, for celery.contrib.pytest's worker."""
    import tasks

    tasks.app.conf.update(broker_url=REDIS_URL, result_backend=REDIS_URL)
    yield tasks.app


@pytest.fixture
def celery_worker_parameters():
    return {"perform_ping_check": False, "shutdown_timeout": 60}


@pytest.fixture
def worker_settings(settings):
    """Install `settings` for tasks running in the in-process worker."""
    from tasks.base import use_settings

    use_settings(settings)
    yield settings
    use_settings(None)


@pytest.fixture
def live_env(env, settings):
    """The env of `settings`, with the readyz URL of the test's web server."""
    return dict(env, READYZ_URL=settings.readyz_url)


@pytest.fixture
def worker_process(live_env, redis_db, tmp_path):
    """Start real `celery -A tasks worker` processes (configured only by the environment); all are
    stopped at the end. Each runs in its own process group so a test can kill the whole group."""
    from tasks import app

    app.conf.update(broker_url=live_env["CELERY_BROKER_URL"], result_backend=live_env["CELERY_RESULT_BACKEND"])
    procs = []

    def start(name: str = "w1") -> subprocess.Popen:
        log = open(tmp_path / f"worker-{name}.log", "wb")  # a file: an unread pipe could block the worker
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "1",
             "--without-gossip", "--without-mingle", "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h"],
            cwd=ROOT, env=dict(os.environ, **live_env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        procs.append(proc)
        deadline = time.monotonic() + 60
        while not any(f"{name}-{os.getpid()}@" in host for reply in app.control.ping(timeout=0.5) for host in reply):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = (tmp_path / f"worker-{name}.log").read_text(errors="replace")
                pytest.fail(f"worker did not start: {out[-2000:]}")
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def cli(env: dict, *args: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m manage.rollback ...` as an operator would, in a child process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "BACKUP_", "DATA_BASE"))}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "manage.rollback", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)

