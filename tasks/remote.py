"""Off-site copies: the upload enqueued after each snapshot (retried with backoff, alerted after the last
try), beat's sync (re-upload what is pending, then remote retention) and the BACKUP_DIR free-space alert."""

from __future__ import annotations

import logging

from rollback import remote
from rollback.errors import RollbackError, SnapshotNotFound
from rollback.notify import send_alert
from rollback.progress import Progress
from rollback.space import alert_if_low

from . import app
from .base import StateReporter, get_settings

log = logging.getLogger(__name__)


def enqueue_upload(snapshot_id: str) -> None:
    """Mark the snapshot pending and send its upload; a broker blip leaves it pending for beat's sync."""
    settings = get_settings()
    if not settings.remote_url:
        return
    remote.write_state(settings, snapshot_id, remote.state.PENDING)
    try:
        upload_snapshot_task.delay(snapshot_id)
    except Exception as exc:  # the snapshot is complete either way; beat's sync uploads pending ones
        log.warning("upload of %s not enqueued (%s: %s); beat's sync will", snapshot_id, type(exc).__name__, exc)


@app.task(bind=True, name="rollback.remote.upload", max_retries=None, acks_late=True)
def upload_snapshot_task(self, snapshot_id: str) -> dict:
    settings = get_settings()
    attempt = self.request.retries + 1
    try:
        return remote.upload_snapshot(settings, snapshot_id, progress=Progress(StateReporter(self)), attempt=attempt)
    except SnapshotNotFound as exc:  # pruned locally before it could be uploaded: nothing left to send
        remote.record_failure(settings, snapshot_id, str(exc), attempt, None)
        return {"id": snapshot_id, "state": "skipped", "error": str(exc)}
    except RollbackError as exc:
        if self.request.retries < settings.remote_upload_retries:
            delay = settings.remote_retry_delay_sec * 2 ** self.request.retries
            remote.record_failure(settings, snapshot_id, str(exc), attempt, delay)
            raise self.retry(countdown=delay, max_retries=settings.remote_upload_retries, exc=exc)
        remote.record_failure(settings, snapshot_id, str(exc), attempt, None)
        send_alert(settings, f"rollback: snapshot {snapshot_id} could not be copied to {settings.remote_url} after "
                             f"{attempt} tries: {exc}. It is complete locally; beat's sync retries it.")
        raise


@app.task(name="rollback.remote.sync")
def sync_remote() -> dict:
    """Beat: send the uploads of snapshots still pending (or failed for good), then apply remote retention."""
    settings = get_settings()
    if not settings.remote_url:
        return {"skipped": "BACKUP_REMOTE_URL is not set"}
    queued = remote.needing_upload(settings)
    for snapshot_id in queued:
        enqueue_upload(snapshot_id)
    try:
        pruned = remote.prune_remote(settings)
    except RollbackError as exc:
        log.warning("remote retention skipped: %s", exc)
        pruned = {"error": str(exc)}
    return {"queued": queued, "prune": pruned}


@app.task(name="rollback.space")
def check_space() -> dict:
    """Beat: alert the webhook when BACKUP_DIR has less free space than the next snapshot needs."""
    return alert_if_low(get_settings())
