"""HTTP probes of the app's readiness URL: one GET, and a wait until it answers 200.

Right after a restart the probes start fast (0.2 s) and back off to the configured interval, so an
app that is up quickly is seen quickly.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from .errors import RollbackError
from .progress import NO_PROGRESS, Progress

FIRST_PROBE_DELAY_SEC = 0.2
BACKOFF = 2.0


def fetch(url: str, timeout: float, max_body: int = 0) -> tuple[int | None, bytes, str | None]:
    """One GET: (HTTP status or None, up to max_body bytes of the body, why it was unreachable or None)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator-configured URL)
            return resp.status, resp.read(max_body) if max_body else b"", None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(max_body) if max_body and exc.fp else b"", None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, b"", f"unreachable ({getattr(exc, 'reason', exc)})"


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """One GET; (True, detail) only for HTTP 200."""
    status, _, error = fetch(url, timeout)
    return status == 200, error or f"HTTP {status}"


def wait_until_ready(url: str, timeout_sec: float, interval_sec: float, progress: Progress = NO_PROGRESS) -> str:
    """Probe `url` until 200 or `timeout_sec`; waits grow from 0.2 s to `interval_sec`. Returns a line
    saying how long it took; raises RollbackError with the last answer when it never became ready."""
    t0 = time.monotonic()
    deadline = t0 + timeout_sec
    delay = min(FIRST_PROBE_DELAY_SEC, interval_sec)
    attempts = 0
    while True:
        attempts += 1
        ok, detail = probe(url, timeout=min(5.0, max(interval_sec, 1.0)))
        remaining = deadline - time.monotonic()
        progress(attempts, attempts + max(0, int(remaining // interval_sec)), f"{url}: {detail}")
        if ok:
            return f"ready after {attempts} probe(s) in {time.monotonic() - t0:.1f} s"
        if remaining <= 0:
            raise RollbackError(f"{url} not ready within {timeout_sec:g} s (last: {detail})")
        time.sleep(min(delay, max(remaining, 0.05)))
        delay = min(delay * BACKOFF, interval_sec)
