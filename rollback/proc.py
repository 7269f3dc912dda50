"""Run external commands with argument lists, timeouts and captured stderr."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from .errors import CommandFailed, RollbackError


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours plus `extra` (secrets travel here, never in argv)."""
    env = dict(os.environ)
    env.update(extra or {})
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        timeout: float | None = 600, stdin_data: bytes | None = None) -> subprocess.CompletedProcess:
    """Run argv; raise CommandFailed with stderr on a non-zero exit, RollbackError on timeout."""
    argv = [str(a) for a in argv]
    try:
        done = subprocess.run(argv, env=child_env(env), cwd=cwd, input=stdin_data, capture_output=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise RollbackError(f"{argv[0]}: command not found (is it installed and on PATH?)") from None
    except subprocess.TimeoutExpired:
        raise RollbackError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr.decode("utf-8", "replace"))
    return done


def output(argv: Sequence[str], **kwargs) -> str:
    return run(argv, **kwargs).stdout.decode("utf-8", "replace").strip()
