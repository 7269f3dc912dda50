"""The operator's view: the CLI through a real `celery -A tasks worker`, timed from start to exit.

`Worker` starts the worker (prefork, 2 processes: a snapshot's standby preparation runs beside the
next request, as in production) on a Redis DB of its own, and reads its log for the tasks' own run
times. `cli()` runs `python -m manage.rollback ...` and returns its wall time, output and peak RSS;
`worker_peak_rss_mb()` is the highest peak RSS (VmHWM) of any worker process so far.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TASK_DONE = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[^\]]+)\] succeeded in (?P<sec>[\d.]+)s")
_TASK_EVENT = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[^\]]+)\] (?P<event>received|succeeded|raised|failed|retry)")


def claim_redis_db() -> tuple[int, int]:
    """A Redis DB no test session uses (the tests' own claim files, tests/conftest.py); (number, fd)."""
    for number in range(15, 0, -1):
        if number == 14:  # the demo's
            continue
        fd = os.open(f"/tmp/rollback-tests-redis-db-{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return number, fd
        except OSError:
            os.close(fd)
    raise RuntimeError("no free Redis DB number")


class Worker:
    def __init__(self, env: dict, log: Path):
        number, self._claim = claim_redis_db()
        url = f"redis://127.0.0.1:6379/{number}"
        self.env = dict(env, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url)
        subprocess.run(["redis-cli", "-n", str(number), "flushdb"], check=True, capture_output=True)
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "2",
                 "--without-gossip", "--without-mingle", "--loglevel", "INFO", "--hostname", f"bench-{os.getpid()}@%h"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        self._peak: dict[int, float] = {}

    def task_seconds(self, name: str, after: int = 0) -> list[float]:
        """Run times the worker logged for task `name` (in order), from log offset `after`."""
        text = self.log.read_text(errors="replace")[after:]
        return [float(m["sec"]) for m in _TASK_DONE.finditer(text) if m["name"] == name]

    def idle(self) -> bool:
        """Every task the worker received has ended (the background work after a restore or a snapshot
        — verification, reports, standby — must not be billed to the next measurement)."""
        pending: set[str] = set()
        for m in _TASK_EVENT.finditer(self.log.read_text(errors="replace")):
            (pending.add if m["event"] == "received" else pending.discard)(m["id"])
        return not pending

    def log_size(self) -> int:
        return len(self.log.read_text(errors="replace"))

    def sample_rss(self) -> None:
        """Record each worker process's VmHWM (its peak RSS so far); pool processes live across tasks."""
        pids = [self.proc.pid] + _children(self.proc.pid)
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"VmHWM:\s+(\d+) kB", status)
            if m:
                self._peak[pid] = max(self._peak.get(pid, 0.0), int(m[1]) / 1024)

    def peak_rss_mb(self) -> float:
        self.sample_rss()
        return max(self._peak.values(), default=0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self._claim)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# `python -m manage.rollback ...`, plus one line on stderr at exit with the process's own peak RSS: VmHWM,
# not ru_maxrss, which Linux carries over fork and exec (it would report the bench runner's own peak).
_CLI = ("import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write('\\nBENCH_MAXRSS_KB=%s\\n' % "
        "[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])); "
        "sys.argv[0] = 'manage.rollback'; runpy.run_module('manage.rollback', run_name='__main__', alter_sys=True)")


def cli(env: dict, *args: str, timeout: float = 1800) -> dict:
    """Run the CLI as an operator does; {"seconds", "stdout", "max_rss_mb"}. Raises on a non-zero exit."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"manage.rollback {' '.join(args)} exited {done.returncode}: "
                           f"{(done.stderr + done.stdout)[-2000:]}")
    rss = re.findall(r"BENCH_MAXRSS_KB=(\d+)", done.stderr)
    return {"seconds": seconds, "stdout": done.stdout, "stderr": done.stderr,
            "max_rss_mb": int(rss[-1]) / 1024 if rss else 0.0}


def journal(backup: Path, txn: str) -> dict:
    return json.loads((backup / "journal" / f"{txn}.json").read_text())


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05) -> float:
    """Wait until predicate() is true; return the seconds waited."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - t0
