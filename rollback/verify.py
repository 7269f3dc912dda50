"""Verification of a snapshot's artifacts: sizes, SHA-256, and a readable dump; and the index of its data
archive built just after it (rollback.tree_index), which applies the restore's member policy again."""

from __future__ import annotations

from pathlib import Path

from . import logbook, tree_index
from .archive import measure_archive
from .errors import IntegrityError, RollbackError
from .fsutil import sha256_file
from .ids import utc_now_iso
from .journal import FINAL_STATES, StepState
from .manifest import Manifest
from .notify import send_alert
from .progress import Progress, Sink, as_progress
from .resources.database import list_dump
from .settings import Settings


def verify_artifacts(settings: Settings, entry: dict, progress: Progress | Sink | None = None,
                     scan_data: bool = False) -> list[str]:
    """Raise IntegrityError on the first mismatch; return one line per check that passed.

    scan_data: also decompress the data archive, in the same pass as its SHA-256, and compare its
    size with the recorded tar_bytes (the restore's cold path: a size the manifest gets wrong must
    stop the restore here, before the db step changes anything; the extraction caps at it)."""
    progress = as_progress(progress)
    folder = settings.backup_dir / entry["id"]
    if not folder.is_dir():
        raise IntegrityError(f"snapshot folder {folder} is missing")
    total = sum(a["size"] for a in entry["artifacts"].values()) or 1
    done_before = 0
    passed = []
    for name, art in sorted(entry["artifacts"].items()):
        path = folder / art["file"]
        _check_size(path, name, art["size"])
        if scan_data and name == "data":
            progress(done_before, total, f"sha256 and decompressed size of {art['file']}")
            try:
                tar_bytes = measure_archive(path, expected_sha256=art["sha256"])
            except RollbackError as exc:
                # Say the most useful thing: bytes that differ from the snapshot's are a SHA-256 mismatch,
                # whatever the decompressor noticed first (a second read, on the failure path only).
                digest, _ = sha256_file(path)
                if digest != art["sha256"]:
                    raise IntegrityError(f"data artifact {path.name}: SHA-256 mismatch (recorded "
                                         f"{art['sha256'][:12]}…, found {digest[:12]}…)") from None
                raise exc if isinstance(exc, IntegrityError) else IntegrityError(f"data artifact {path.name}: {exc}") from None
            if art.get("tar_bytes") and tar_bytes != art["tar_bytes"]:
                raise IntegrityError(f"data artifact {path.name}: decompresses to {tar_bytes} bytes, the manifest "
                                     f"records {art['tar_bytes']}")
            passed.append(f"data: {path.name} {art['size']} bytes, sha256 ok, {tar_bytes} bytes decompressed as recorded")
            done_before += art["size"]
            continue
        digest, size = sha256_file(path, progress=lambda n, base=done_before: progress(
            base + n, total, f"sha256 of {art['file']}: {(base + n) * 100 // total}%"))
        if size != art["size"] or digest != art["sha256"]:
            raise IntegrityError(f"{name} artifact {path.name}: SHA-256 mismatch (recorded {art['sha256'][:12]}…, "
                                 f"found {digest[:12]}…)")
        passed.append(f"{name}: {path.name} {size} bytes, sha256 ok")
        done_before += art["size"]
    dump = folder / entry["artifacts"]["db"]["file"]
    try:
        list_dump(dump, timeout=settings.command_timeout_sec)
    except RollbackError as exc:
        raise IntegrityError(f"db artifact {dump.name} is not a readable pg_dump archive: {exc}") from None
    passed.append("db: pg_restore --list ok")
    return passed


def _check_size(path: Path, name: str, expected: int) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IntegrityError(f"{name} artifact {path} is missing") from None
    if size != expected:
        raise IntegrityError(f"{name} artifact {path.name}: size {size} bytes, recorded {expected}")


def verify_snapshot(settings: Settings, snapshot_ref: str, progress: Progress | Sink | None = None) -> dict:
    """Verify and record the outcome in the manifest (`verified`: {at, ok, error}); progress is
    reported as the step `verify`."""
    manifest = Manifest.for_settings(settings)
    entry = manifest.resolve(snapshot_ref)
    try:
        checks = verify_artifacts(settings, entry, as_progress(progress).scoped("verify"))
    except IntegrityError as exc:
        manifest.update(entry["id"], verified={"at": utc_now_iso(), "ok": False, "error": str(exc)})
        raise
    manifest.update(entry["id"], verified={"at": utc_now_iso(), "ok": True})
    return {"id": entry["id"], "ok": True, "checks": checks}


def needs_verification_after_restore(doc: dict) -> bool:
    """True when a restore journal has ended after a preflight that chose the warm standby, and so
    did not hash the artifacts (a step may still have fallen back to reading them)."""
    return (doc["status"] in FINAL_STATES and bool((doc.get("marks") or {}).get("standby"))
            and doc["steps"]["preflight"]["status"] == StepState.OK)


def verify_after_standby_restore(settings: Settings, snapshot_id: str, txn: str) -> dict:
    """The artifacts' check a standby-backed restore skipped in its preflight, run afterwards: the
    outcome is recorded in the manifest (`verified`) and rollback.log; a mismatch is also alerted, since
    the snapshot can no longer be trusted for a cold restore. Never raises for what it finds."""
    try:
        report = verify_snapshot(settings, snapshot_id)
    except IntegrityError as exc:
        logbook.rollback_event(settings.rollback_log, txn, "verify", "mismatch", snapshot=snapshot_id, error=str(exc))
        send_alert(settings, f"rollback: snapshot {snapshot_id} was restored from its warm standby by {txn}, but its "
                             f"artifacts no longer match the manifest ({exc}); a cold restore of it would be refused")
        return {"id": snapshot_id, "ok": False, "error": str(exc)}
    except RollbackError as exc:  # e.g. pruned meanwhile: nothing left to check, say so
        logbook.rollback_event(settings.rollback_log, txn, "verify", "not_verified", snapshot=snapshot_id,
                               error=str(exc))
        return {"id": snapshot_id, "ok": False, "error": str(exc)}
    logbook.rollback_event(settings.rollback_log, txn, "verify", "ok", snapshot=snapshot_id)
    return report


def index_after_snapshot(settings: Settings, snapshot_id: str) -> dict:
    """Index a new snapshot's data archive (a background task right after the snapshot). A member the
    policy refuses (an entry created while the snapshot ran) or bytes that no longer match the manifest
    are alerted: a cold restore of that snapshot would be refused. Never raises for what it finds; a
    snapshot it could not index for another reason (pruned meanwhile, a full disk) is indexed by its first
    reader instead; `mismatch` tells the two failures apart."""
    try:
        entry = Manifest.for_settings(settings).resolve(snapshot_id)
        summary = tree_index.ensure_index(settings, entry)
    except IntegrityError as exc:
        logbook.append(settings.rollback_log, logbook.format_event("snapshot index failed", id=snapshot_id, error=str(exc)))
        send_alert(settings, f"rollback: snapshot {snapshot_id}'s data archive does not match its manifest ({exc}); "
                             f"a cold restore of it would be refused")
        return {"id": snapshot_id, "indexed": False, "error": str(exc), "mismatch": True}
    except (RollbackError, OSError) as exc:
        error = str(exc) if isinstance(exc, RollbackError) else f"{exc.strerror or exc} ({exc.filename or ''})"
        logbook.append(settings.rollback_log, logbook.format_event("snapshot index failed", id=snapshot_id, error=error))
        return {"id": snapshot_id, "indexed": False, "error": error}
    if "unsafe" in summary:
        send_alert(settings, f"rollback: snapshot {snapshot_id}'s data archive holds a member a restore refuses "
                             f"({summary['unsafe']}): it was created while the snapshot ran; a restore of this "
                             f"snapshot will be refused, take a new one")
        return {"id": snapshot_id, "indexed": True, "unsafe": summary["unsafe"]}
    return {"id": snapshot_id, "indexed": True, **summary}
