#!/usr/bin/env python3
"""Process runner for Render: the web app, the Celery worker and Celery beat in one service.

Why one service: a Render persistent disk attaches to exactly one instance of one service, and the
worker (which snapshots and restores DATA_BASE_DIR and BACKUP_DIR) must see that disk. So the
start command is `python scripts/render_start.py`, which
- starts `web` (Flask on 0.0.0.0:$PORT), `worker` (`celery -A tasks worker`) and `beat`
  (`celery -A tasks beat -s $BEAT_SCHEDULE_FILE`);
- on Render (RENDER_GIT_COMMIT set), once /healthz answers, runs the post-deploy hook
  `scripts/deploy_hook.sh post --no-wait` (deploy id `render-<commit>`): Render has no post-deploy
  hook, and an instance starting with a commit is when that commit goes live. The deploy id is
  per commit, so restarts of the same deploy never cause a second automatic rollback;
- forwards SIGTERM/SIGINT to every child; when any child exits, stops the others and exits with a
  non-zero code so that Render restarts the instance whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_SEC = 25.0  # below Render's default 30 s shutdown delay
HOOK_DEADLINE_SEC = 180.0  # the worker may take a while to answer its first ping
HOOK_RETRY_SEC = 3.0


def log(message: str) -> None:
    print(f"[render_start] {message}", flush=True)


def commands(env: dict) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "web": [py, "-m", "gunicorn", "--bind", f"0.0.0.0:{env.get('PORT', '10000')}", "--workers", "2",
                "--threads", "4", "--timeout", "60", "web:create_app()"],
        "worker": [py, "-m", "celery", "-A", "tasks", "worker", "--loglevel", "INFO",
                   "--concurrency", env.get("WORKER_CONCURRENCY", "2")],
        "beat": [py, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO",
                 "-s", env.get("BEAT_SCHEDULE_FILE", "celerybeat-schedule")],
    }


def post_hook_command(env: dict) -> list[str] | None:
    """Only on Render: the hook names the deploy after RENDER_GIT_COMMIT."""
    if not env.get("RENDER_GIT_COMMIT", "").strip():
        return None
    return ["bash", str(ROOT / "scripts" / "deploy_hook.sh"), "post", "--no-wait"]


class Runner:
    def __init__(self, env: dict):
        self.env = env
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.hook_argv = post_hook_command(env)
        self.hook: subprocess.Popen | None = None
        self.hook_next_try = 0.0
        self.hook_deadline = time.monotonic() + HOOK_DEADLINE_SEC
        self.healthz = f"http://127.0.0.1:{env.get('PORT', '10000')}/healthz"

    def start(self) -> None:
        for name, argv in commands(self.env).items():
            self.children[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env)
            log(f"started {name} (pid {self.children[name].pid})")

    def request_stop(self, signum, _frame) -> None:
        log(f"signal {signum}: stopping")
        self.stopping = True

    def run(self) -> int:
        self.start()
        while not self.stopping:
            exited = [(n, p.returncode) for n, p in self.children.items() if p.poll() is not None]
            if exited:
                name, code = exited[0]
                log(f"{name} exited with {code}; stopping the others")
                self.stop()
                return code or 1
            self.drive_post_hook()
            time.sleep(0.5)
        self.stop()
        return 0

    def drive_post_hook(self) -> None:
        """Run the post-deploy hook once the web app answers; retry while the worker is not up yet."""
        if self.hook_argv is None or time.monotonic() < self.hook_next_try:
            return
        if self.hook is None:
            if _answers(self.healthz):
                self.hook = subprocess.Popen(self.hook_argv, cwd=ROOT, env=self.env)
            return
        code = self.hook.poll()
        if code is None:
            return
        if code == 0:
            log("post-deploy hook enqueued the canary")
            self.hook_argv = None
        elif time.monotonic() > self.hook_deadline:
            log(f"post-deploy hook failed (exit {code}); giving up: run it by hand")
            self.hook_argv = None
        else:
            self.hook, self.hook_next_try = None, time.monotonic() + HOOK_RETRY_SEC

    def stop(self) -> None:
        procs = [p for p in self.children.values() if p.poll() is None]
        if self.hook is not None and self.hook.poll() is None:
            procs.append(self.hook)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SEC
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (our own local URL)
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    runner = Runner(dict(os.environ))
    signal.signal(signal.SIGTERM, runner.request_stop)
    signal.signal(signal.SIGINT, runner.request_stop)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
