"""readyz: poll READYZ_URL until it answers 200 or the timeout passes."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from ..errors import RollbackError
from .context import StepContext


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """One GET; (True, detail) only for HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator-configured URL)
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable ({getattr(exc, 'reason', exc)})"


def wait_ready(ctx: StepContext) -> str:
    settings = ctx.settings
    deadline = time.monotonic() + settings.ready_timeout_sec
    attempts = 0
    while True:
        attempts += 1
        ok, detail = probe(settings.readyz_url, timeout=min(5.0, settings.ready_interval_sec))
        remaining = deadline - time.monotonic()
        ctx.progress(attempts, attempts + max(0, int(remaining // settings.ready_interval_sec)),
                     f"{settings.readyz_url}: {detail}")
        if ok:
            return f"ready after {attempts} probe(s)"
        if remaining <= 0:
            raise RollbackError(f"{settings.readyz_url} not ready within {settings.ready_timeout_sec:g} s (last: {detail})")
        time.sleep(min(settings.ready_interval_sec, max(remaining, 0.05)))
