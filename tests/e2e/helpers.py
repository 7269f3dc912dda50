"""Helpers of the end-to-end tests: the deploy hook as an operator runs it, HTTP probes, waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT


def operator_env(env: dict) -> dict:
    """The process environment of a deploy hook or a service process configured by `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "BACKUP_", "DATA_BASE"))}
    return dict(base, **env)


def run_hook(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "deploy_hook.sh"), *args], cwd=ROOT,
                          env=operator_env(env), capture_output=True, text=True, timeout=timeout)


def start_hook(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "deploy_hook.sh"), *args], cwd=ROOT,
                            env=operator_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_for(predicate, timeout: float, interval: float = 0.01, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def canary_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " CANARY " in line] if log.exists() else []


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the process's whole group (it was started with start_new_session), SIGKILL after `grace`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
