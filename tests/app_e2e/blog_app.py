"""The protected app of these tests, for real: examples/blog copied into a git repo, migrated with
`flask db upgrade`, seeded, and served by a gunicorn master with two workers whose code is the checkout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from tests.conftest import git
from tests.e2e.helpers import operator_env, wait_for

FIXTURE = Path(__file__).resolve().parents[2] / "examples" / "blog"
PAGES = ("/", "/users/1", "/users/2", "/uploads/avatar-aiko.png", "/uploads/notes/kyoto.txt")
USERS = [("aiko@example.com", "Aiko Tanaka", "Writes about night trains."),
         ("ben@example.com", "Ben Okafor", None),
         ("chloe@example.com", "Chloé Martin", "Café notes from Lyon.")]
POSTS = [(1, "Sleeper to Sapporo", "Twelve hours, one bento."),
         (2, "Moving the blog to Postgres", "It went fine, mostly."),
         (3, "Best croissant in Lyon", "A short list."),
         (1, "Kyoto in the rain", "Umbrellas everywhere."),
         (2, "Why I keep backups", "Because deploys happen.")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_repo(repo: Path) -> None:
    """The app's checkout: the fixture's files as commit "v1"."""
    shutil.copytree(FIXTURE, repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "deploy@example.com")
    git(repo, "config", "user.name", "deploy")
    commit(repo, "v1")


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def populate_data_dir(data: Path) -> None:
    (data / "uploads" / "notes").mkdir(parents=True)
    users = [{"id": i, "email": email, "name": name} for i, (email, name, _) in enumerate(USERS, start=1)]
    (data / "users.json").write_text(json.dumps(users, ensure_ascii=False, indent=2))
    (data / "uploads" / "avatar-aiko.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(32 * 1024))
    (data / "uploads" / "notes" / "kyoto.txt").write_text("京都: bring an umbrella.\n")


class BlogApp:
    """One running instance of the blog; `env` is the app's environment (shared with the service)."""

    def __init__(self, repo: Path, data_dir: Path, run_dir: Path, env: dict):
        self.repo, self.data_dir, self.run_dir, self.env = repo, data_dir, run_dir, env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.pid_file = run_dir / "app.pid"
        self.log = run_dir / "gunicorn.log"
        self.restart_command = f"kill -HUP $(cat {self.pid_file})"
        self.proc: subprocess.Popen | None = None

    # -- set-up, as the app's own deploy does it ----------------------------------------------------
    def flask(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m flask --app blog ...` in the checkout (e.g. `db upgrade`)."""
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "blog", *args], cwd=self.repo,
                              env=operator_env(self.env), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def seed(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            for email, name, bio in USERS:
                conn.execute("insert into users (email, name, bio) values (%s, %s, %s)", (email, name, bio))
            for user_id, title, body in POSTS:
                conn.execute("insert into posts (user_id, title, body) values (%s, %s, %s)", (user_id, title, body))

    @property
    def conninfo(self) -> str:
        return self.env["DATABASE_URL"]

    def alembic_revision(self) -> str | None:
        with psycopg.connect(self.conninfo) as conn:
            row = conn.execute("select version_num from alembic_version").fetchone()
        return row[0] if row else None

    # -- the gunicorn master -----------------------------------------------------------------------
    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", "2",
                 "--pid", str(self.pid_file), "blog:create_app()"],
                cwd=self.repo, env=operator_env(self.env), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for(lambda: self.pid_file.exists() and len(self.worker_pids()) == 2 and self.status("/healthz") == 200
                 or self._fail_if_dead(), timeout=30, interval=0.1, what="gunicorn to serve /healthz")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _fail_if_dead(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited ({self.proc.returncode}):\n{self.log_tail()}")
        return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    @property
    def master_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def worker_pids(self) -> set[int]:
        """The master's live children (gunicorn's workers), read from /proc."""
        master = self.proc.pid
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == master and fields[0] != "Z":
                pids.add(int(entry.name))
        return pids

    def reload(self) -> None:
        """What the deploy does after `flask db upgrade`: the same APP_RESTART_COMMAND (SIGHUP to the
        master: new workers on the checked-out code), then wait until no old worker is left."""
        old = self.worker_pids()
        subprocess.run(["/bin/sh", "-c", self.restart_command], check=True, cwd=self.repo, timeout=10)
        self.wait_for_new_workers(old, timeout=30)

    def wait_for_new_workers(self, old: set[int], timeout: float) -> set[int]:
        def replaced():
            now = self.worker_pids()
            return now if len(now) == 2 and not now & old and self.status("/healthz") == 200 else None
        return wait_for(replaced, timeout=timeout, interval=0.05, what="gunicorn's workers to be replaced")

    # -- HTTP ------------------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc).encode()

    def status(self, path: str) -> int:
        return self.get(path)[0]

    def readyz(self) -> tuple[int, dict]:
        status, body = self.get("/readyz")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"raw": body[:500].decode(errors="replace")}

    def pages(self) -> dict[str, tuple[int, bytes]]:
        return {path: self.get(path) for path in PAGES}

    def serves(self, expected: dict[str, tuple[int, bytes]]) -> bool:
        """Every page as expected, and /readyz 200, on several requests (two workers answer)."""
        return all(self.pages() == expected for _ in range(3)) and self.status("/readyz") == 200


def prepare_blog(repo: Path, data_dir: Path, run_dir: Path, env: dict) -> BlogApp:
    """A v1 checkout migrated to head with the real `flask db upgrade`, seeded; not started yet."""
    run_dir.mkdir(exist_ok=True)
    create_repo(repo)
    populate_data_dir(data_dir)
    app = BlogApp(repo, data_dir, run_dir, env)
    app.flask("db", "upgrade")
    app.seed()
    return app
