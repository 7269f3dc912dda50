"""readyz: restart the app on the restored code, then poll READYZ_URL until it answers 200.

The restart comes first: until the app's processes are restarted they may still run the replaced
code. APP_RESTART_COMMAND does it (a failure fails this step, with db, data and code left
restored); with CODE_ROLLBACK_STRATEGY=render the rollback deploy already restarted the service.
Right after a restart the probes start fast (0.2 s) and back off to ROLLBACK_READY_INTERVAL_SEC, so
an app that is up quickly is seen quickly.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from .. import app_process, logbook
from ..errors import RollbackError
from .context import StepContext

FIRST_PROBE_DELAY_SEC = 0.2
BACKOFF = 2.0
NOT_RESTARTED_NOTE = ("the app process was not restarted (APP_RESTART_COMMAND is not set): "
                      "it may still run the replaced code")
RENDER_NOTE = ("the app was restarted by Render's rollback deploy (CODE_ROLLBACK_STRATEGY=render); "
               "APP_RESTART_COMMAND is not run")


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
    restarted = restart(ctx)
    ready = poll_ready(ctx)
    return f"{restarted}; {ready}" if restarted else ready


def restart(ctx: StepContext) -> str:
    """Restart the app's processes on the restored code; return a line for the step detail."""
    settings = ctx.settings
    if settings.code_rollback_strategy == "render":
        ctx.journal.add_note(ctx.txn, RENDER_NOTE)
        return "restarted by the Render rollback deploy"
    if not settings.app_restart_command:
        ctx.journal.add_note(ctx.txn, NOT_RESTARTED_NOTE)
        return ""
    ctx.progress(0, 1, "restarting the app (APP_RESTART_COMMAND)")
    result = app_process.restart_app(settings, ctx.txn)
    ctx.mark("restart", result.record())
    logbook.rollback_event(settings.rollback_log, ctx.txn, "restart", "ok" if result.ok else "failed",
                           exit="timeout" if result.timed_out else result.exit,
                           duration_sec=f"{result.duration_sec:.1f}", command=result.command,
                           error=result.start_error, output=result.output_tail[-500:] or None)
    if not result.ok:
        raise RollbackError(f"the app restart command failed ({result.describe()}); database, data and code "
                            f"ARE restored — restart the app by hand, then check READYZ_URL ({settings.readyz_url})")
    ctx.journal.add_note(ctx.txn, f"the app was restarted by APP_RESTART_COMMAND (exit 0 in {result.duration_sec:.1f} s)")
    return f"app restarted in {result.duration_sec:.1f} s"


def poll_ready(ctx: StepContext) -> str:
    """Probe READYZ_URL until 200 or ROLLBACK_READY_TIMEOUT_SEC; waits grow from 0.2 s to the interval."""
    settings = ctx.settings
    t0 = time.monotonic()
    deadline = t0 + settings.ready_timeout_sec
    delay = min(FIRST_PROBE_DELAY_SEC, settings.ready_interval_sec)
    attempts = 0
    while True:
        attempts += 1
        ok, detail = probe(settings.readyz_url, timeout=min(5.0, max(settings.ready_interval_sec, 1.0)))
        remaining = deadline - time.monotonic()
        ctx.progress(attempts, attempts + max(0, int(remaining // settings.ready_interval_sec)),
                     f"{settings.readyz_url}: {detail}")
        if ok:
            return f"ready after {attempts} probe(s) in {time.monotonic() - t0:.1f} s"
        if remaining <= 0:
            raise RollbackError(f"{settings.readyz_url} not ready within {settings.ready_timeout_sec:g} s (last: {detail})")
        time.sleep(min(delay, max(remaining, 0.05)))
        delay = min(delay * BACKOFF, settings.ready_interval_sec)
