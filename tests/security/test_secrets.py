"""Item 10: secrets never leak, and BACKUP_DIR is private.

The deployment's secrets (the database password in DATABASE_URL, MANIFEST_HMAC_KEY, the API token, the
console password, SECRET_KEY and BACKUP_ENCRYPTION_KEY) are set for a worker and for the CLI. While snapshots and restores run
(through the worker and with --local, the in-place strategy's alembic child included, and one that
fails on an unreachable database), a sampler reads /proc/*/cmdline every few milliseconds. Then the
logs, the CLI's output, the worker's output, every Celery result in Redis, the journals, the manifest
and the snapshot records are searched. Passwords travel to libpq in the environment (PGPASSWORD), which
is allowed: /proc/<pid>/environ is readable only by the process owner and root.

Every file in BACKUP_DIR must be 0600 and every folder 0700, even with a umask of 000.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REDIS_URL, ROOT
from tests.faults import figures as F
from tests.faults.conftest import process_env

import redis


class CmdlineSampler:
    """Reads every process's argv in a loop; remembers each argv that contains a secret."""

    def __init__(self, needles: list[str]):
        self.needles = [n.encode() for n in needles]
        self.hits: list[str] = []
        self.sweeps = 0
        self.processes_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                self.processes_seen.add(int(pid))
                if any(n in argv for n in self.needles):
                    self.hits.append(f"{pid}: {argv[:200]!r}")
            self.sweeps += 1
            time.sleep(0.002)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def run_cli(env: dict, *args: str, umask: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manage.rollback", *args], cwd=ROOT, env=process_env(env),
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask))


def modes_problems(backup: Path) -> list[str]:
    bad = []
    for dirpath, dirnames, filenames in os.walk(backup):
        for name in dirnames + filenames + ([""] if dirpath == str(backup) else []):
            p = Path(dirpath, name) if name else Path(dirpath)
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode) and mode != 0o700:
                bad.append(f"{p} is a folder with mode {mode:o}")
            elif stat.S_ISREG(st.st_mode) and mode != 0o600:
                bad.append(f"{p} is a file with mode {mode:o}")
            elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                bad.append(f"{p} is neither a file nor a folder")
    return bad


def test_no_secret_in_argv_logs_results_or_journal_and_backup_dir_is_private(settings, live_env, workers, figures,
                                                                               tmp_path):
    password = "pw-" + secrets.token_hex(12)
    hmac_key = "hk-" + secrets.token_hex(16)
    token = "tk-" + secrets.token_hex(16)
    admin_password = "ap-" + secrets.token_hex(12)
    secret_key = "sk-" + secrets.token_hex(16)
    encryption_key = base64.b64encode(secrets.token_bytes(32)).decode()
    needles = [password, hmac_key, token, admin_password, secret_key, encryption_key]
    db = settings.database
    env = dict(live_env, DATABASE_URL=f"postgresql+psycopg://{db.user}:{password}@{db.host}:{db.port}/{db.dbname}",
               MANIFEST_HMAC_KEY=hmac_key, ROLLBACK_API_TOKEN=token, ROLLBACK_ADMIN_USER="ops",
               ROLLBACK_ADMIN_PASSWORD=admin_password, SECRET_KEY=secret_key, BACKUP_ENCRYPTION_KEY=encryption_key)
    case = figures.case(10, "secrets in /proc/*/cmdline, logs, CLI output, Celery results, journals; BACKUP_DIR modes")
    worker = workers.start(env, umask=0)
    sampler = CmdlineSampler(needles)
    outputs = []
    try:
        rounds = F.runs(2, 20)
        for i in range(rounds):
            case.begin()
            local = ["--local"] if i % 2 else []
            for args in (["snapshot", *local], ["restore", "--snapshot", "latest", "--reason", f"secrets {i}", "--yes",
                                                 *local]):
                done = run_cli(env, *args)
                outputs.append(done.stdout + done.stderr)
                assert done.returncode == 0, (args, done.stderr[-2000:])
            case.run("snapshot + restore (worker)" if not local else "snapshot + restore (--local)")
        # The in-place strategy runs `alembic downgrade` in a child with the URL in its environment.
        done = run_cli(dict(env, DB_RESTORE_STRATEGY="in-place"), "restore", "--snapshot", "latest", "--reason",
                       "in-place", "--yes", "--local")
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr[-2000:]
        case.run("restore in-place (--local)")
        # A failure whose message names the database: the password must not come with it.
        broken = dict(env, DATABASE_URL=f"postgresql://{db.user}:{password}@{db.host}:1/{db.dbname}")
        for args in (["snapshot", "--local"], ["restore", "--snapshot", "latest", "--reason", "unreachable", "--yes",
                                               "--local"], ["fingerprint"]):
            done = run_cli(broken, *args)
            outputs.append(done.stdout + done.stderr)
            assert done.returncode != 0
        case.run("failures on an unreachable database (--local)")
    finally:
        sampler.stop()
    places: dict[str, str] = {"cli output": "\n".join(outputs), "worker output": worker.output()}
    for path in [settings.rollback_log, *settings.backup_dir.rglob("*.json")]:
        places[str(path)] = path.read_text(errors="replace")
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter("*"):
        kind = client.type(key)
        value = client.get(key) if kind == b"string" else repr(client.dump(key))
        places[f"redis {key!r}"] = (value or b"").decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    leaks = [f"{where}: {n[:3]}…" for where, text in places.items() for n in needles if n in text]
    leaks += [f"argv {hit}" for hit in sampler.hits]
    modes = modes_problems(settings.backup_dir)
    case.note(f"{sampler.sweeps} sweeps of /proc, {len(sampler.processes_seen)} processes seen, "
              f"{len(places)} places searched; {len(list(settings.backup_dir.rglob('*')))} entries in BACKUP_DIR")
    case.run("0 secrets, modes 0600/0700" if not leaks and not modes else "LEAK OR MODE", data_lost=len(leaks) + len(modes))
    assert sampler.sweeps > 50
    assert not leaks, leaks
    assert not modes, modes


def test_the_password_reaches_libpq_through_the_environment_only(settings, live_env):
    """The positive side of the rule: pg_dump gets PGPASSWORD in its environment and nothing in argv."""
    from rollback.settings import Settings
    from rollback.resources.database import dump_database

    password = "pw-" + secrets.token_hex(8)
    db = settings.database
    s = Settings.from_env(dict(live_env, DATABASE_URL=f"postgresql://{db.user}:{password}@{db.host}:{db.port}/{db.dbname}"))
    sampler = CmdlineSampler([password])
    environ_seen: dict[int, bool] = {}
    stop = threading.Event()

    def watch_environ():
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                        if ppid == os.getpid() and Path(f"/proc/{pid}/comm").read_text().strip() == "pg_dump":
                            # During exec the new environment appears a moment after the new name: any sighting counts.
                            seen = password.encode() in Path(f"/proc/{pid}/environ").read_bytes()
                            environ_seen[int(pid)] = environ_seen.get(int(pid), False) or seen
                    except OSError:
                        pass
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_environ, daemon=True)
    watcher.start()
    try:
        for i in range(5):
            dump_database(s, settings.backup_dir.parent / f"probe-{i}.dump")
    finally:
        stop.set()
        watcher.join(5)
        sampler.stop()
    assert not sampler.hits
    assert environ_seen and all(environ_seen.values()), environ_seen
