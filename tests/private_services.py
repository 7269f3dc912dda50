"""A Postgres cluster and a Redis server of the test session's own, on free ports under a temp dir.

The outage tests stop, kill and restart their servers; they do it to these, never to the machine's shared
Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) that other sessions and developers use.

Postgres: the Debian binaries (`/usr/lib/postgresql/<newest>/bin/initdb`, `pg_ctl`), trust auth, run as
the `postgres` OS user when we are root (initdb refuses root). Redis: `redis-server` as a child process
without persistence (it dies with us). Servers left behind by a session that was killed are removed by the
next one (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DIR_PREFIX = "rollback-private-services-"
PG_SUPERUSER = "postgres"


class ServiceError(RuntimeError):
    """A private server could not be set up (one line: what and where to look)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_base_dir() -> Path:
    """A fresh temp dir named after this process (for `sweep_stale`), reachable by the postgres user."""
    base = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_SUPERUSER)
        os.chown(base, user.pw_uid, user.pw_gid)
        if subprocess.run(_as_pg_owner(["test", "-w", str(base)]), capture_output=True).returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            raise ServiceError(f"the {PG_SUPERUSER} user cannot write {base}; set TMPDIR to a directory it can reach")
    return base


def _as_pg_owner(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root, run them as the postgres OS user."""
    return ["runuser", "-u", PG_SUPERUSER, "--", *argv] if os.geteuid() == 0 else argv


def pg_bindir() -> Path:
    """The newest Debian server installation that has initdb and pg_ctl."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(Path(p) / "initdb", os.X_OK) and os.access(Path(p) / "pg_ctl", os.X_OK)]
    if not found:
        raise ServiceError("no /usr/lib/postgresql/*/bin/initdb found (apt-get install postgresql)")
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


# -- Postgres -----------------------------------------------------------------------------------------
class PrivatePostgres:
    """initdb + pg_ctl under `base/pg`, listening on 127.0.0.1:<port> only, socket in `base`."""

    def __init__(self, base: Path):
        self.base = base
        self.bindir = pg_bindir()
        self.data_dir = base / "pg"
        self.log = base / "pg.log"
        self.port = 0

    @property
    def admin_url(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(_as_pg_owner([str(self.bindir / argv[0]), *argv[1:]]), capture_output=True,
                              text=True, timeout=timeout, cwd=self.base)

    def _fail(self, what: str, done: subprocess.CompletedProcess) -> ServiceError:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return ServiceError(f"private Postgres: {what} failed: {detail[0]} (log: {self.log})")

    def create(self) -> None:
        """initdb, then start on a free port (another free one if that was taken in between)."""
        done = self._run("initdb", "-D", str(self.data_dir), "-U", PG_SUPERUSER, "-A", "trust", "-E", "UTF8",
                         "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        if done.returncode != 0:
            raise self._fail("initdb", done)
        for _attempt in range(3):
            self.port = free_port()
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write(f"\n# private test server\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                           f"unix_socket_directories = '{self.base}'\n")
            with contextlib.suppress(ServiceError):
                self.start()
                return
        raise ServiceError(f"private Postgres did not start on a free port (log: {self.log})")

    def start(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "60", "start")
        if done.returncode != 0 or not self.is_up():
            raise self._fail("pg_ctl start", done)

    def stop(self, mode: str = "fast") -> None:
        """What `pg_ctlcluster ... stop` does (fast: sessions are cut, a clean shutdown)."""
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        if done.returncode != 0 and self.running():
            raise self._fail("pg_ctl stop", done)

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def is_up(self) -> bool:
        return subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                               "-t", "1"], capture_output=True).returncode == 0

    def ensure_up(self, timeout: float = 60) -> None:
        if self.is_up():
            return
        if not self.running():
            self.start()
        _wait(self.is_up, timeout, f"the private Postgres on :{self.port}", 0.1)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Stopped for the body (keep it short), always started again."""
        try:
            self.stop()
            yield
        finally:
            self.ensure_up()

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def drop_databases(self, prefix: str) -> None:
        """`prefix` and every copy a restore made of it (`__pre_`, `__new_`, `__standby`)."""
        self.ensure_up()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            names = [r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                                (prefix.replace("_", r"\_") + "%",))]
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "60", "stop")


# -- Redis ----------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test session dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class PrivateRedis:
    """`redis-server` as a child process on 127.0.0.1:<port>, no persistence, dir `base/redis`."""

    def __init__(self, base: Path):
        self.base = base
        self.dir = base / "redis"
        self.dir.mkdir(exist_ok=True)
        self.log = base / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        # No retries: a refused connection must answer at once (redis-py retries with backoff by default).
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=1,
                           retry=Retry(NoBackoff(), 0))

    def is_up(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def create(self) -> None:
        for _attempt in range(3):
            self.port = free_port()
            with contextlib.suppress(ServiceError):
                self.start()
                return
        raise ServiceError(f"private Redis did not start on a free port (log: {self.log})")

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--dir", str(self.dir), "--logfile", ""],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        (self.base / "redis.pid").write_text(str(self.proc.pid))
        try:
            _wait(lambda: self.is_up() or self.proc.poll() is not None, 30, f"the private Redis on :{self.port}")
        except ServiceError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise ServiceError(f"private Redis exited at start (log: {self.log})")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, persist: bool, down_sec: float = 0.5) -> None:
        """SHUTDOWN SAVE (the restarted server loads what it had) or NOSAVE (everything is lost), a pause,
        and the same command line again. Always started again; no dump is left behind."""
        dump = self.dir / "dump.rdb"
        try:
            with contextlib.suppress(redis.ConnectionError):
                self.client().shutdown(save=persist, nosave=not persist)
            if self.proc:
                self.proc.wait(30)
            time.sleep(down_sec)
        finally:
            self.ensure_up()
            dump.unlink(missing_ok=True)

    def ensure_up(self) -> None:
        if self.is_up():
            return
        self.stop()
        self.start()


# -- what a killed session left behind -----------------------------------------------------------------
def sweep_stale() -> list[Path]:
    """Stop and remove the private servers of sessions that are gone (killed before their teardown)."""
    removed = []
    for base in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        owner = base.name[len(DIR_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or _pid_alive(int(owner)):
            continue
        with contextlib.suppress(Exception):
            PrivatePostgres(base).destroy()
        with contextlib.suppress(Exception):
            pid = int((base / "redis.pid").read_text())
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


class PrivateServices:
    """Both servers under one temp dir; `close()` stops them and removes everything (idempotent)."""

    def __init__(self):
        sweep_stale()
        self.base = make_base_dir()
        self.postgres = PrivatePostgres(self.base)
        self.redis = PrivateRedis(self.base)
        self._closed = False

    def start_postgres(self) -> PrivatePostgres:
        if not self.postgres.port:
            self.postgres.create()
        return self.postgres

    def start_redis(self) -> PrivateRedis:
        if not self.redis.port:
            self.redis.create()
        return self.redis

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.redis.stop()
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.postgres.destroy()
            shutil.rmtree(self.base, ignore_errors=True)


# -- proof that the shared servers were left alone -------------------------------------------------------
def server_identity(pg_admin_url: str, redis_url: str) -> dict:
    """What changes when a server restarts: Postgres' postmaster start time and Redis' run_id."""
    with psycopg.connect(pg_admin_url, autocommit=True, connect_timeout=5) as conn:
        started = conn.execute("select pg_postmaster_start_time()").fetchone()[0]
    run_id = redis.Redis.from_url(redis_url, socket_timeout=5).info("server")["run_id"]
    return {"postgres started": started.isoformat(), "redis run_id": run_id}
