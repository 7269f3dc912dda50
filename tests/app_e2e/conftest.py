"""Fixtures of the app end-to-end tests: the blog (examples/blog) served by a real gunicorn, the
rollback service's environment pointing at it, and the worker started from the Procfile's own line.

examples/blog holds the protected app's source, not tests: no file there is named like a test module
(test_*.py, *_test.py) and it has no conftest.py, so pytest collects nothing from it and never puts it on
sys.path.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app_e2e.blog_app import BlogApp, prepare_blog
from tests.conftest import REDIS_URL, ROOT
from tests.e2e.helpers import operator_env, stop_process_group, wait_for


@pytest.fixture
def blog_env(tmp_path, database_name) -> dict:
    """The app's own environment (what its gunicorn and its `flask db` commands get)."""
    return {
        # postgresql:// without a driver: SQLAlchemy picks psycopg2, as the app's requirements expect
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database_name}",
        "DATA_BASE_DIR": str(tmp_path / "var-data"),
        "BLOG_SECRET_KEY": "e2e-not-a-secret-but-long-enough",
        "READYZ_REQUIRED_ENV": "BLOG_SECRET_KEY",
        "READYZ_TABLES": "users:3,posts:1",
        # rollback.flask is imported by the app; here from the source tree, in production from the package
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.call_failed = report.failed


@pytest.fixture
def blog(request, tmp_path, blog_env) -> BlogApp:
    app = prepare_blog(tmp_path / "blog", Path(blog_env["DATA_BASE_DIR"]), tmp_path / "run", blog_env)
    try:
        app.start()
        yield app
    finally:
        app.stop()
        if getattr(request.node, "call_failed", False):  # what the app said is the first thing to read
            for log in (app.log, *sorted(tmp_path.glob("*.log")), *sorted(tmp_path.glob("logs/*.log"))):
                if log.exists():
                    print(f"--- {log.name} (end) ---\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def service_env(tmp_path, blog, blog_env, redis_db) -> dict:
    """The rollback service's environment on the same host: the app's variables plus its own."""
    return dict(
        blog_env,
        BACKUP_DIR=str(tmp_path / "backup"),
        APP_REPO_DIR=str(blog.repo),
        ALEMBIC_CONFIG=str(blog.repo / "migrations" / "alembic.ini"),
        LOG_DIR=str(tmp_path / "logs"),
        READYZ_URL=f"{blog.base_url}/readyz",
        APP_RESTART_COMMAND=blog.restart_command,
        CELERY_BROKER_URL=REDIS_URL,
        CELERY_RESULT_BACKEND=REDIS_URL,
        ROLLBACK_READY_TIMEOUT_SEC="10",
        ROLLBACK_READY_INTERVAL_SEC="0.5",
        MIGRATION_TRACE_FILE=str(tmp_path / "migration-trace.log"),
    )


def procfile_command(process: str) -> list[str]:
    """The Procfile's command line of `process`, run with this interpreter."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            argv = shlex.split(command)
            return [sys.executable, "-m", argv[0], *argv[1:]] if argv[0] in ("celery", "gunicorn") else argv
    raise AssertionError(f"Procfile has no {process}: line")


@pytest.fixture
def procfile_worker(tmp_path):
    """start(env) -> Popen: the Procfile's `worker:` command with `env`, named so that the ping finds it."""
    from tasks import app

    procs: list[subprocess.Popen] = []

    def start(env: dict) -> subprocess.Popen:
        app.conf.update(broker_url=env["CELERY_BROKER_URL"], result_backend=env["CELERY_RESULT_BACKEND"])
        name = f"app-e2e-{os.getpid()}-{len(procs)}"
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:  # a file: an unread pipe could block the worker
            proc = subprocess.Popen([*procfile_command("worker"), "--hostname", f"{name}@%h"], cwd=ROOT,
                                    env=operator_env(env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        proc.log = log
        procs.append(proc)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited ({proc.returncode}): {log.read_text()[-2000:]}")
            return any(f"{name}@" in host for reply in app.control.ping(timeout=0.5) for host in reply)

        wait_for(answers, timeout=60, interval=0.1, what="the Procfile worker to answer a ping")
        return proc

    yield start
    for proc in procs:
        stop_process_group(proc)
