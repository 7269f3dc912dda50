"""Fixtures of the fault-injection suite: figures, real worker processes with logs in files, a
two-snapshot scenario whose states are captured, and a Postgres and a Redis of the session's own
(`private_postgres`, `private_redis`) for the tests that stop and restart their servers.

Everything is real (Postgres, Redis, `celery -A tasks worker`, git, tar); nothing of ours is mocked. The
machine's shared Postgres and Redis are never stopped: every test here checks that their identity (start
time, run_id) is the same after it as before it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import pytest

from tests import state
from tests.status_server import StatusServer
from tests.conftest import PG_ADMIN, REDIS_URL, ROOT
from tests.faults import figures as figures_mod
from tests.private_services import (
    PrivatePostgres, PrivateRedis, PrivateServices, ServiceError, server_identity)

# The markers `faults` and `security` are registered in pytest.ini.
SUITE_DIRS = {"faults": pytest.mark.faults, "security": pytest.mark.security}


def pytest_collection_modifyitems(config, items):
    """Mark every test of tests/faults and tests/security (idempotent: tests/security's conftest reuses it)."""
    tests_dir = Path(__file__).parents[1]
    for item in items:
        for name, mark in SUITE_DIRS.items():
            if tests_dir / name in Path(str(item.fspath)).parents and not item.get_closest_marker(name):
                item.add_marker(mark)


def pytest_terminal_summary(terminalreporter):
    figures_mod.terminal_summary(terminalreporter)


# -- servers of the session's own, and the shared ones left alone ------------------------------------
@pytest.fixture(scope="session")
def private_services() -> Iterator[PrivateServices]:
    """Started on first use, stopped and removed at the end of the session, also on a failure, Ctrl-C or
    SIGTERM (e.g. CI's `timeout`), which is turned into KeyboardInterrupt so that pytest tears down."""
    try:
        services = PrivateServices()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield services
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        services.close()


@pytest.fixture(scope="session")
def private_postgres(private_services) -> PrivatePostgres:
    try:
        return private_services.start_postgres()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def private_redis(private_services) -> PrivateRedis:
    try:
        return private_services.start_redis()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(autouse=True)
def shared_servers_untouched():
    """No test of this suite may stop or restart the machine's shared Postgres or Redis."""
    before = server_identity(PG_ADMIN, REDIS_URL)
    yield
    after = server_identity(PG_ADMIN, REDIS_URL)
    changed = {k: f"{before[k]} -> {after[k]}" for k in before if before[k] != after[k]}
    assert not changed, f"the shared servers were restarted during this test: {changed}"


@pytest.fixture
def figures(request):
    rec = figures_mod.Figures(request.node.nodeid)
    yield rec
    rec.close()


# -- the environment of a process (CLI, worker) -------------------------------------------------
def process_env(env: dict, **overrides) -> dict:
    """os.environ without any deployment variable of the caller, plus the test's env."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE_URL", "BACKUP_", "DATA_BASE", "MANIFEST_", "ROLLBACK_", "CELERY_"))}
    base.update(env)
    base.update({k: str(v) for k, v in overrides.items()})
    return base


# -- real worker processes ----------------------------------------------------------------------
@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """Pids of the prefork pool children (direct children of the main process)."""
        out = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                out += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return out

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Workers:
    """start(name, env) -> Worker; every group is stopped at the end."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.all: list[Worker] = []

    def start(self, env: dict, name: str = "w", wait: bool = True, umask: int | None = None) -> Worker:
        name = f"{name}{len(self.all) + 1}"
        log = self.tmp_path / f"worker-{name}.log"
        hostname = f"{name}-{os.getpid()}-{secrets.token_hex(2)}@%h"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "1",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
                 "--hostname", hostname],
                cwd=ROOT, env=process_env(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
        worker = Worker(name, proc, log)
        self.all.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    @staticmethod
    def wait_ready(worker: Worker, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in worker.output():
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker {worker.name} did not start: {worker.output()[-3000:]}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for worker in self.all:
            if worker.proc.poll() is None:
                worker.kill_group(signal.SIGTERM)
                try:
                    worker.proc.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill_group(signal.SIGKILL)
                    worker.proc.wait()
            else:
                worker.kill_group(signal.SIGKILL)  # pool children orphaned by a killed parent


@pytest.fixture
def workers(tmp_path, redis_db, celery_app):
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


# -- a readyz the test controls -------------------------------------------------------------------
class GateServer(StatusServer):
    """/readyz that answers 503 until `open()`, then 200: holds a restore in its last step."""

    def __init__(self, start_open: bool = False):
        self.ready = threading.Event()
        if start_open:
            self.ready.set()
        super().__init__(lambda: 200 if self.ready.is_set() else 503)

    def open(self) -> None:
        self.ready.set()

    def close(self) -> None:
        self.ready.clear()


_ALWAYS_READY: list = []


def _always_ready() -> "GateServer":
    if not _ALWAYS_READY:
        _ALWAYS_READY.append(GateServer(start_open=True))
    return _ALWAYS_READY[0]


@pytest.fixture
def gate():
    server = GateServer()
    yield server
    server.stop()


# -- two snapshots and their captured states ------------------------------------------------------
COMPONENTS = ("db", "data", "code")


def split(capture: dict) -> dict:
    return {"db": (capture["schema"], capture["rows"], capture["alembic"]), "data": capture["tree"],
            "code": capture["head"]}


@dataclass
class Scenario:
    """`good` (taken before a bad deploy) and `bad` (after it), each with the state it holds."""

    settings: object
    good: dict
    bad: dict
    states: dict = field(default_factory=dict)  # snapshot id -> split capture

    def live(self) -> dict:
        """Per component: the split capture, or None when it cannot be read (e.g. absent)."""
        out = {}
        try:
            cap = state.capture(self.settings)
            return split(cap)
        except Exception:  # a component is absent: read them one by one
            pass
        for comp in COMPONENTS:
            try:
                if comp == "db":
                    out[comp] = (state.schema_dump(self.settings), state.row_hashes(self.settings),
                                 state.alembic_version(self.settings))
                elif comp == "data":
                    d = self.settings.data_base_dir
                    out[comp] = state.tree(d) if d.is_dir() else None
                else:
                    out[comp] = state.git_head(self.settings.app_repo_dir)
            except Exception:
                out[comp] = None
        return out

    def classify(self, live: dict | None = None) -> dict:
        """Per component: 'good', 'bad', 'absent' or 'other'."""
        live = live or self.live()
        good, bad = self.states[self.good["id"]], self.states[self.bad["id"]]
        out = {}
        for comp in COMPONENTS:
            value = live.get(comp)
            out[comp] = ("absent" if value is None else "good" if value == good[comp]
                         else "bad" if value == bad[comp] else "other")
        return out

    def reset_to_bad(self) -> None:
        """Bring everything back to `bad` (the state before each faulty restore of `good`): the code
        first (only the bad deploy's code knows its migration), then a plain restore of `bad`."""
        from rollback.restore import run_restore_local
        from tests.conftest import git

        if self.classify() == dict.fromkeys(COMPONENTS, "bad"):
            return
        git(self.settings.app_repo_dir, "reset", "-q", "--hard", self.bad["app_revision"])
        # The bad deploy's /readyz fails (that is what makes it bad): the reset waits on an open one.
        always_ready = self.settings.with_overrides(readyz_url=_always_ready().url)
        doc = run_restore_local(always_ready, self.bad["id"], reason="reset to the bad deploy")
        # In-place, `bad` is ahead of the live revision: a clean-slate fallback, a success with warnings.
        assert doc["status"] in ("succeeded", "succeeded_with_warnings"), doc
        assert self.classify() == dict.fromkeys(COMPONENTS, "bad")

    def name_of(self, snapshot_id: str) -> str:
        return "good" if snapshot_id == self.good["id"] else "bad"

    def other(self, snapshot_id: str) -> dict:
        return self.bad if snapshot_id == self.good["id"] else self.good


def with_big_file(settings, mib: int) -> None:
    if mib:
        (settings.data_base_dir / "uploads" / "big.bin").write_bytes(os.urandom(mib << 20))


def build_scenario(settings, big_mib: int = 0) -> Scenario:
    """Snapshot `good`, apply the bad deploy (code, migration, rows, files), snapshot `bad`.
    The live state is then `bad`'s."""
    from rollback.snapshot import create_snapshot

    with_big_file(settings, big_mib)
    good_state = split(state.capture(settings))
    good = create_snapshot(settings, notes="good")
    state.bad_deploy(settings, settings.app_repo_dir)
    bad_state = split(state.capture(settings))
    bad = create_snapshot(settings, notes="bad")
    return Scenario(settings, good, bad, {good["id"]: good_state, bad["id"]: bad_state})


def previous_state_lost(settings, txn: str, previous: dict) -> int:
    """How many components (db, data, code) of the state before the restore are gone: neither live any
    more nor kept (`<db>__pre_<txn>`, `<DATA_BASE_DIR>.pre-<txn>`, refs/rollback/pre-*). Must be 0, whether
    the restore finished or not."""
    from rollback.journal import Journal
    from rollback.resources.data_tree import layout
    from rollback.resources.database import pre_database_name

    live = Scenario(settings, {}, {}).live()
    marks = Journal(settings.backup_dir).load(txn).get("marks", {})
    lost = 0
    if live["db"] != previous["db"]:
        pre_db = pre_database_name(settings.database.dbname, txn)
        pre_settings = settings.with_overrides(database=replace(settings.database, dbname=pre_db))
        try:
            kept = (state.schema_dump(pre_settings), state.row_hashes(pre_settings), state.alembic_version(pre_settings))
        except Exception:  # noqa: BLE001 - absent: nothing kept
            kept = None
        lost += kept != previous["db"]
    if live["data"] != previous["data"]:
        _staging, pre_tree = layout(settings.data_base_dir, txn, bool(marks.get("data_mounted")))
        lost += not pre_tree.is_dir() or state.tree(pre_tree) != previous["data"]
    if live["code"] != previous["code"]:
        lost += (marks.get("code_pre_ref") or {}).get("commit") != previous["code"]
    return int(lost)


# -- waiting on journals ----------------------------------------------------------------------------
def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def journal_doc(settings, txn: str) -> dict | None:
    from rollback.errors import RollbackError
    from rollback.journal import Journal

    try:
        return Journal(settings.backup_dir).load(txn)
    except RollbackError:
        return None


def wait_final(settings, txn: str, timeout: float = 120) -> dict:
    return wait_until(lambda: (d := journal_doc(settings, txn)) and d["status"] in ("succeeded", "failed") and d,
                      timeout, 0.05, f"{txn} to finish")
