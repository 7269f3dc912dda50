"""The readiness checks that need neither a database nor a framework, shared by the app's own /readyz
(rollback.flask) and the service's (web/readyz.py). Standard library only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

USERS_FILE_MAX_BYTES = 64 << 20


class CheckFailed(Exception):
    """A check ran and found a problem; the message is the detail shown."""


def check_required_env(required: Iterable[str], missing: Iterable[str]) -> str:
    """Names only: a value is never shown, present ones appear as NAME=***."""
    required, missing = list(required), list(missing)
    if not required:
        return "no required variables configured (READYZ_REQUIRED_ENV)"
    present = ", ".join(f"{name}=***" for name in required if name not in missing) or "none"
    if missing:
        raise CheckFailed(f"missing: {', '.join(missing)}; present: {present}")
    return f"present: {present}"


def check_json_file(path: Path) -> str:
    """The file is readable, not huge, and valid JSON."""
    try:
        with open(path, "rb") as f:
            raw = f.read(USERS_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise CheckFailed(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > USERS_FILE_MAX_BYTES:
        raise CheckFailed(f"{path}: larger than {USERS_FILE_MAX_BYTES >> 20} MiB")
    try:
        json.loads(raw)
    except ValueError as exc:
        raise CheckFailed(f"{path}: not valid JSON ({exc})") from None
    return f"{path.name}: valid JSON, {len(raw)} bytes"
