"""At worker start, resolve a restore left unfinished by a dead worker before taking new work."""

from __future__ import annotations

import logging

from celery.signals import worker_ready

from rollback import restore as core
from rollback.errors import RollbackError

log = logging.getLogger("rollback")


@worker_ready.connect
def reconcile_on_start(sender=None, **_):
    from .base import get_settings
    from .restore import send_canvas

    try:
        settings = get_settings()
        outcome = core.reconcile(settings)
    except RollbackError as exc:
        log.error("reconcile skipped: %s", exc)
        return
    if not outcome:
        return
    log.warning("reconcile: %s", outcome)
    if outcome["action"] == "resume":
        send_canvas(settings, outcome["txn"], outcome["attempt"], outcome["steps"])
    elif outcome["action"] == "finished":  # no step task runs for it: its discarded-writes report is sent here
        from .discarded import enqueue_report

        try:
            enqueue_report(settings, outcome["txn"])
        except Exception as exc:  # the restore's outcome is recorded; the report can be built by hand
            log.warning("no discarded-writes report for %s (%s: %s)", outcome["txn"], type(exc).__name__, exc)
