"""After a rollback, the protected app itself comes back: a real Flask-SQLAlchemy + Flask-Migrate blog
served by gunicorn (same master, new workers after APP_RESTART_COMMAND) answers its own pages over HTTP
exactly as before the bad deploy. Real Postgres, Redis, git, the Procfile's worker, the deploy hook and
the CLI; both database strategies; the warm standby on in one case of each test."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollback.journal import Journal
from rollback.manifest import Manifest
from rollback.tree_index import DATA_SUMMARY, tree_summary
from tests.app_e2e.blog_app import BlogApp
from tests.app_e2e.deploys import V1_HEAD, deploy_rename_and_damage_data, deploy_wrong_pages
from tests.conftest import ROOT, git
from tests.e2e.helpers import operator_env, wait_for

pytestmark = pytest.mark.slow

CASES = {  # (DB_RESTORE_STRATEGY, ROLLBACK_STANDBY)
    "canary": [("swap", "true"), ("in-place", "false")],
    "manual": [("swap", "false"), ("in-place", "true")],
}


def configure(env: dict, strategy: str, standby: str) -> dict:
    env.update(DB_RESTORE_STRATEGY=strategy, ROLLBACK_STANDBY=standby)
    if strategy == "in-place":
        # Flask-Migrate's env.py needs the app: the downgrade must run through `flask db`.
        env["ALEMBIC_COMMAND"] = f"{sys.executable} -m flask --app blog db"
    return env


class Command:
    """An operator's command running in the background, its output in files (a full pipe cannot stall it)."""

    def __init__(self, argv: list[str], env: dict, out_dir: Path, name: str):
        self.out, self.err = out_dir / f"{name}.out", out_dir / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=operator_env(env), stdout=out, stderr=err)

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        returncode = self.proc.wait(timeout)
        return returncode, self.out.read_text(), self.err.read_text()


def cli(env: dict, tmp_path: Path, *args: str) -> Command:
    return Command([sys.executable, "-m", "manage.rollback", *args], env, tmp_path, f"cli-{args[0]}")


def deploy_hook(env: dict, tmp_path: Path, *args: str) -> Command:
    return Command(["bash", str(ROOT / "scripts" / "deploy_hook.sh"), *args], env, tmp_path, f"hook-{args[0]}")


def wait_for_index(env: dict, snapshot_id: str) -> dict:
    path = Path(env["BACKUP_DIR"]) / snapshot_id / DATA_SUMMARY
    wait_for(path.is_file, timeout=60, interval=0.1, what=f"the index of {snapshot_id}'s data archive")
    return json.loads(path.read_text())


def wait_for_standby(env: dict, snapshot_id: str) -> None:
    path = Path(env["BACKUP_DIR"]) / "standby.json"

    def ready() -> bool:
        try:
            return json.loads(path.read_text()).get("snapshot_id") == snapshot_id
        except (FileNotFoundError, ValueError):
            return False
    wait_for(ready, timeout=60, interval=0.1, what=f"the warm standby of {snapshot_id}")


@dataclass
class Watched:
    served_at: float | None  # monotonic time every page was first served as before (with /readyz 200)
    served_wall: float | None  # the same moment on the wall clock (to compare with the canary's record)
    exited_at: float  # monotonic time the command was first seen ended


def watch(app: BlogApp, original: dict, command: Command, after_exit: float) -> Watched:
    """Poll the app while `command` runs and up to `after_exit` s after it ends."""
    seen = Watched(None, None, 0.0)
    exited_at = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if exited_at is None and command.ended():
            exited_at = time.monotonic()
        if seen.served_at is None and app.serves(original):
            seen.served_at, seen.served_wall = time.monotonic(), time.time()
        if seen.served_at is not None and exited_at is not None:
            break
        if exited_at is not None and time.monotonic() > exited_at + after_exit:
            break
        time.sleep(0.1)
    seen.exited_at = exited_at or time.monotonic()
    return seen


def check_journal(env: dict, strategy: str, standby: str, migration: str) -> dict:
    """The restore ended plain `succeeded`, restarted the app, and took the configured database path."""
    journals = Journal(Path(env["BACKUP_DIR"])).all()
    assert len(journals) == 1, journals
    doc = journals[0]
    assert doc["status"] == "succeeded", doc
    assert doc["warnings"] == [], doc["warnings"]
    marks = doc["marks"]
    assert marks["restart"]["exit"] == 0 and not marks["restart"]["timed_out"], marks["restart"]
    log = (Path(env["LOG_DIR"]) / "rollback.log").read_text()
    assert f"ROLLBACK id={doc['txn']} step=restart status=ok" in log
    assert "status=fallback" not in log
    assert f"restore {doc['txn']}" in (Path(env["LOG_DIR"]) / "app-restart.log").read_text()
    assert marks["db_strategy"] == strategy
    assert bool(marks.get("standby")) == (standby == "true"), marks.get("standby")
    trace = Path(env["MIGRATION_TRACE_FILE"])
    if strategy == "in-place":
        assert marks["db_revision_after_downgrade"] == V1_HEAD, marks
        # The deployed code's own downgrade ran, through `flask db`, on the app's driver.
        assert trace.read_text().splitlines() == [f"downgrade {migration} app=blog driver=psycopg2"]
    else:
        assert not trace.exists()
        if standby == "true":
            assert marks.get("db_source") == "standby", marks
    return doc


def check_code_and_schema(app: BlogApp, v1: str, master: int, bad_workers: set[int]) -> None:
    assert git(app.repo, "rev-parse", "HEAD") == v1
    assert app.alembic_revision() == V1_HEAD
    assert app.master_pid == master, "the app's master process was replaced, not reloaded"
    assert not app.worker_pids() & bad_workers, "workers of the bad deploy are still serving"


@pytest.mark.parametrize("strategy,standby", CASES["canary"], ids=["swap-warm-standby", "in-place-cold"])
def test_a_deploy_caught_by_readiness_is_rolled_back_by_the_canary_and_the_app_serves_again(
        blog, service_env, procfile_worker, strategy, standby, tmp_path, capsys):
    env = configure(service_env, strategy, standby)
    procfile_worker(env)
    original = blog.pages()
    assert all(status == 200 for status, _ in original.values()), original
    assert blog.status("/readyz") == 200, blog.readyz()
    v1, master = git(blog.repo, "rev-parse", "HEAD"), blog.master_pid

    returncode, _, err = deploy_hook(env, tmp_path, "pre", "--deploy-id", "blog-v2").finish()
    assert returncode == 0, err
    snap = Manifest(Path(env["BACKUP_DIR"])).entries()[-1]
    assert snap["alembic_revision"] == V1_HEAD and snap["app_revision"] == v1
    if standby == "true":
        wait_for_standby(env, snap["id"])

    deploy_rename_and_damage_data(blog)
    status, body = blog.readyz()
    assert status == 503 and body["checks"]["users_file"]["ok"] is False, body
    assert blog.get("/")[1] != original["/"][1] and b"AIKO TANAKA" in blog.get("/")[1]
    bad_workers = blog.worker_pids()

    t0 = time.monotonic()
    post = deploy_hook(env, tmp_path, "post", "--deploy-id", "blog-v2", "--snapshot", snap["id"], "--json")
    seen = watch(blog, original, post, after_exit=10)
    returncode, out, err = post.finish()

    assert returncode == 1, err  # not ready, rolled back
    verdict = json.loads(out)
    assert verdict["status"] == "rolled_back" and verdict["snapshot_id"] == snap["id"], verdict
    assert seen.served_at is not None, f"the app never served the original pages again; /readyz: {blog.readyz()}"
    assert blog.pages() == original
    check_code_and_schema(blog, v1, master, bad_workers)
    doc = check_journal(env, strategy, standby, "c2e8f0a4d6b3")
    assert doc["auto"] is True and doc["reason"] == "readyz_fail" and doc["requested_by"] == "canary"
    with capsys.disabled():
        print(f"\n[app e2e canary, {strategy}, standby={standby}] deploy hook post start -> first correct page: "
              f"{seen.served_at - t0:.2f} s, of which the canary's watch {env['ROLLBACK_READY_TIMEOUT_SEC']} s; "
              f"not-ready verdict -> first correct page {seen.served_wall - verdict['not_ready_ts']:.2f} s "
              f"(canary's own measure to /readyz 200: {verdict['recovery_sec']:.2f} s); hook returned after "
              f"{seen.exited_at - t0:.2f} s; restore steps: {_durations(doc)}")


@pytest.mark.parametrize("strategy,standby", CASES["manual"], ids=["swap-cold", "in-place-warm-standby"])
def test_a_deploy_readiness_cannot_see_is_rolled_back_by_the_cli_and_the_app_serves_again(
        blog, service_env, procfile_worker, strategy, standby, tmp_path, capsys):
    env = configure(service_env, strategy, standby)
    procfile_worker(env)
    original = blog.pages()
    assert all(status == 200 for status, _ in original.values()), original
    v1, master = git(blog.repo, "rev-parse", "HEAD"), blog.master_pid

    returncode, out, err = cli(env, tmp_path, "snapshot", "--notes", "before v2", "--json").finish()
    assert returncode == 0, err
    # The worker indexes the archive after the snapshot: what it read back is the tree the app had.
    assert wait_for_index(env, json.loads(out)["id"]) == tree_summary(Path(env["DATA_BASE_DIR"]))
    if standby == "true":
        wait_for_standby(env, json.loads(out)["id"])

    deploy_wrong_pages(blog)
    assert blog.status("/readyz") == 200, blog.readyz()  # readiness sees nothing wrong
    assert b"aiko@example.com" in blog.get("/")[1] and b"Ben Okafor" in blog.get("/users/1")[1]
    bad_workers = blog.worker_pids()

    t0 = time.monotonic()
    restore = cli(env, tmp_path, "restore", "--snapshot", "latest", "--reason", "manual", "--yes", "--json")
    seen = watch(blog, original, restore, after_exit=5)
    returncode, out, err = restore.finish()

    assert returncode == 0, err
    assert json.loads(out)["status"] == "succeeded", out
    assert seen.served_at is not None, \
        f"the app did not serve the original pages within 5 s of the CLI returning; /readyz: {blog.readyz()}"
    check_code_and_schema(blog, v1, master, bad_workers)
    doc = check_journal(env, strategy, standby, "5b2d7e9c1f38")
    assert doc["auto"] is False and doc["reason"] == "manual" and doc["requested_by"] == "cli"
    with capsys.disabled():
        print(f"\n[app e2e manual, {strategy}, standby={standby}] restore CLI start -> first correct page: "
              f"{seen.served_at - t0:.2f} s (CLI returned after {seen.exited_at - t0:.2f} s; "
              f"restore steps: {_durations(doc)})")


def _durations(doc: dict) -> str:
    return ", ".join(f"{name} {step.get('duration_sec') or 0:.2f}" for name, step in doc["steps"].items())
