"""The protected app's own commands, run in its environment: ALEMBIC_COMMAND and APP_RESTART_COMMAND.

Both belong to the app rather than to this service (e.g. Flask-Migrate's `flask --app microblog db`,
whose env.py needs the app; a shell command that restarts the app's processes). They run with this
process's environment plus DATABASE_URL exactly as configured, in a process group of their own so
that a timeout ends everything they started, and with their combined output kept for the error
message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .ids import utc_now_iso
from .logbook import mask_secrets
from .proc import child_env
from .settings import Settings

TAIL_LINES = 20
TAIL_CHARS = 2000
TERM_GRACE_SEC = 2.0


@dataclass
class AppCommandResult:
    command: str
    exit: int | None  # None: killed on timeout, or never started
    duration_sec: float
    output_tail: str
    timed_out: bool = False
    start_error: str | None = None
    started_at: str = ""
    finished_at: str = ""

    @property
    def ok(self) -> bool:
        return self.exit == 0 and not self.timed_out and self.start_error is None

    def describe(self) -> str:
        """One line for an error message: what went wrong and the end of the output."""
        tail = " | ".join(line for line in self.output_tail.splitlines() if line.strip())[-500:]
        if self.start_error:
            what = f"could not start: {self.start_error}"
        elif self.timed_out:
            what = f"did not finish within {self.duration_sec:.0f} s and was killed"
        else:
            what = f"exit {self.exit}"
        return f"{what}: {tail}" if tail else f"{what}, no output"

    def record(self) -> dict:
        return asdict(self)


def app_env(settings: Settings) -> dict[str, str]:
    """This process's environment plus DATABASE_URL exactly as configured: the app's own driver
    (e.g. psycopg2 for `postgresql://`) must not be swapped for ours."""
    return child_env({"DATABASE_URL": settings.database_url} if settings.database_url else None)


def run_app_command(argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float,
                    output_path: Path | None = None) -> AppCommandResult:
    """Run argv in a new session; kill its whole group on timeout; never raises for the command's failure.

    Output goes to a file, not a pipe: a restart command that leaves the app running in the
    background keeps the file open, and a pipe would make us wait for the app to exit. With
    `output_path` the file is appended to (a visible log); otherwise it is a temporary file.
    """
    argv = [str(a) for a in argv]
    shown = mask_secrets(" ".join(argv))
    started, t0 = utc_now_iso(), time.monotonic()
    out = _open_output(output_path)
    try:
        offset = out.seek(0, os.SEEK_END)
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return AppCommandResult(shown, None, 0.0, "", start_error=f"{exc.strerror or exc} ({cwd})",
                                    started_at=started, finished_at=utc_now_iso())
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # interrupted (e.g. the worker is stopping): leave nothing behind
            _kill_group(proc)
            raise
        duration = time.monotonic() - t0
        if timed_out:
            _kill_group(proc)
        return AppCommandResult(shown, None if timed_out else proc.returncode, round(duration, 3),
                                _tail(out, offset), timed_out=timed_out, started_at=started,
                                finished_at=utc_now_iso())
    finally:
        out.close()


def _open_output(path: Path | None):
    if path is None:
        return tempfile.TemporaryFile()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a+b")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL whatever is left after a short grace."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_SEC), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if grace is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # The leader may be gone while its children live on: SIGKILL the group regardless.
    proc.wait()


def _tail(out, offset: int) -> str:
    """The last lines of what the command wrote, secrets masked."""
    out.flush()
    end = out.seek(0, os.SEEK_END)
    out.seek(max(offset, end - 64 * 1024))
    text = out.read().decode("utf-8", "replace")
    lines = text.rstrip("\n").splitlines()[-TAIL_LINES:]
    return mask_secrets("\n".join(lines)[-TAIL_CHARS:])
