"""logs/rollback.log: one appended line per event, secrets masked."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from .ids import utc_now_iso

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+):(?P<pw>[^@\s]+)@", re.I)
_KEY_VALUE = re.compile(r"(?P<key>password|passwd|token|secret|api_key)(?P<sep>\s*[=:]\s*)(?P<val>[^\s,;&]+)", re.I)


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs and key=value pairs."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}***", text)


def _quote(value: object) -> str:
    text = mask_secrets(str(value)).replace("\n", " ")
    return f'"{text}"' if (" " in text or not text) else text


def format_event(prefix: str, **fields) -> str:
    parts = [prefix] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def append(log_path: Path, line: str) -> None:
    """Append one timestamped line; flock keeps lines from different processes whole."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{utc_now_iso()} {mask_secrets(line)}\n".encode())
    finally:
        os.close(fd)


def rollback_event(log_path: Path, txn: str, step: str, status: str, **fields) -> None:
    append(log_path, format_event("ROLLBACK", id=txn, step=step, status=status, **fields))


AUDIT_OUTCOMES = ("ok", "queued", "refused", "failed", "denied", "unauthorized", "throttled")


def audit(log_path: Path, who: str, address: str, action: str, outcome: str, **details) -> str:
    """One AUDIT line per privileged action: who did it, from where, what, and how it ended.

    `who` is the operator (a console user, "api", or the OS user of a CLI run), `address` the client
    address ("local" for a shell on this host). Secrets in any value are masked like every other line.
    Returns the line written (without its timestamp).
    """
    line = format_event("AUDIT", who=who or "-", addr=address or "-", action=action, outcome=outcome, **details)
    append(log_path, line)
    return line


def local_operator(env: dict | None = None) -> str:
    """The OS user behind a CLI run, through sudo when there is one ("alice via sudo")."""
    import getpass

    env = os.environ if env is None else env
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    sudo = env.get("SUDO_USER")
    return f"{sudo} via sudo" if sudo and sudo != user else user
