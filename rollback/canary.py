"""Canary: after a deploy, watch READYZ_URL; if the app does not become ready, roll back once.

The watch is a sequence of short ticks (one probe each) so that no process sleeps through it: the
caller runs `tick` and, when it answers `wait`, runs it again that many seconds later (the Celery
adapter re-schedules its task). Everything a tick needs is in a small durable record,
BACKUP_DIR/canary/<deploy_id>.json, replaced atomically; it also remembers the automatic rollback
of the deploy, so a deploy gets at most one, however often its canary runs.

Phases: watching (probe until ready, or until ROLLBACK_READY_TIMEOUT_SEC) -> restoring (the
automatic restore runs; the restore's own readyz step decides whether the restored app is ready)
-> done. Every verdict is a `CANARY deploy=... status=ready|not_ready|rolled_back` log line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import discarded_summary as discarded, logbook, notify
from .errors import LockHeld, RollbackError, SnapshotNotFound
from .fsutil import atomic_write_bytes
from .http_probe import probe
from .ids import new_txn_id, utc_now_iso
from .journal import FINAL_STATES, Journal, is_success
from .lock import ServiceLock
from .manifest import Manifest, ensure_private_dir
from .settings import Settings

DEPLOY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESTORE_POLL_SEC = 0.5
ADMISSION_RETRIES = 5  # a prune or snapshot holding the lock for a moment is not a reason to give up
TAKEOVER_GRACE_SEC = 60.0
# The rolled-back alert carries the counts of the discarded-writes report (made by the worker right after
# the restore): wait for it this long once the restore succeeded (or this long for it to be requested).
REPORT_WAIT_SEC = 30.0
REPORT_GRACE_SEC = 2.0

# start_restore(settings, snapshot_id) -> journal doc of the admitted (and enqueued) restore
StartRestore = Callable[[Settings, str], dict]


class InvalidDeployId(RollbackError):
    """A deploy id that is not a safe file name (bad input: exit 2, HTTP 400)."""


@dataclass
class Outcome:
    """What the caller does next: run `tick` again after `wait` seconds, or report `verdict`."""

    message: str
    wait: float | None = None
    verdict: dict | None = None


def validate_deploy_id(value: object) -> str:
    if isinstance(value, str) and DEPLOY_ID_RE.fullmatch(value):
        return value
    raise InvalidDeployId(f"invalid deploy id {repr(value)[:80]}: use letters, digits, '.', '_' and '-' "
                          f"(at most 128, starting with a letter or digit)")


def new_deploy_id() -> str:
    return "deploy-" + new_txn_id().removeprefix("txn-")


# -- the record ---------------------------------------------------------------------------------
def record_path(settings: Settings, deploy_id: str) -> Path:
    return settings.backup_dir / "canary" / f"{validate_deploy_id(deploy_id)}.json"


def load_record(settings: Settings, deploy_id: str) -> dict | None:
    try:
        return json.loads(record_path(settings, deploy_id).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise RollbackError(f"canary record of {deploy_id} is unreadable") from None


def _save(settings: Settings, rec: dict) -> None:
    rec["updated_at"], rec["updated_ts"] = utc_now_iso(), time.time()
    atomic_write_bytes(record_path(settings, rec["deploy_id"]), json.dumps(rec, indent=2).encode())


@contextlib.contextmanager
def _record_lock(settings: Settings, deploy_id: str) -> Iterator[None]:
    """One tick of a deploy's canary at a time (a redelivered message may race the original)."""
    folder = ensure_private_dir(settings.backup_dir / "canary")
    fd = os.open(folder / f".{deploy_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def stale_canaries(settings: Settings, now: float | None = None) -> list[dict]:
    """Unfinished canaries nobody has advanced for a while (their worker was replaced or killed):
    the records a starting worker resumes."""
    now = time.time() if now is None else now
    folder = settings.backup_dir / "canary"
    stale = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            continue
        if rec.get("phase") != "done" and now - rec.get("updated_ts", 0) > max(10.0, 3 * rec["interval_sec"]):
            stale.append(rec)
    return stale


# -- one tick -------------------------------------------------------------------------------------
def tick(settings: Settings, deploy_id: str, snapshot_ref: str | None, run_id: str,
         start_restore: StartRestore, now: Callable[[], float] = time.time) -> Outcome:
    """Advance the canary of `deploy_id` by one step. `run_id` identifies this canary run (the same
    across its ticks); a new run of a finished canary watches again, keeping its rollback history."""
    validate_deploy_id(deploy_id)
    with _record_lock(settings, deploy_id):
        rec = load_record(settings, deploy_id)
        if rec is None or (rec["run_id"] != run_id and _may_take_over(rec, now())):
            rec = _begin_or_alert(settings, deploy_id, snapshot_ref, run_id, rec, now())
        elif rec["run_id"] != run_id:
            return Outcome(f"canary {rec['run_id']} is already watching deploy {deploy_id}",
                           verdict=dict(_verdict(rec, "duplicate"), watched_by=rec["run_id"]))
        if rec["phase"] == "done":
            return Outcome("canary already finished", verdict=rec["verdict"])
        step = _watch if rec["phase"] == "watching" else _follow_restore
        outcome = step(settings, rec, start_restore, now())
        _save(settings, rec)
        return outcome


def _may_take_over(rec: dict, now: float) -> bool:
    """A finished canary may be run again; a watching one only if its runner is clearly gone."""
    if rec["phase"] == "done":
        return True
    return rec["phase"] == "watching" and now > rec["deadline_ts"] + TAKEOVER_GRACE_SEC


def _begin_or_alert(settings: Settings, deploy_id: str, snapshot_ref: str | None, run_id: str,
                    previous: dict | None, now: float) -> dict:
    """A canary that cannot start (no snapshot to fall back to) leaves the deploy unprotected: say so."""
    try:
        return _begin(settings, deploy_id, snapshot_ref, run_id, previous, now)
    except RollbackError as exc:
        logbook.append(settings.rollback_log, logbook.format_event(
            "CANARY", deploy=deploy_id, status="error", error=str(exc)))
        notify.send_alert(settings, f"Rollback canary: deploy {deploy_id} is NOT watched: {exc}")
        raise


def _begin(settings: Settings, deploy_id: str, snapshot_ref: str | None, run_id: str,
           previous: dict | None, now: float) -> dict:
    manifest = Manifest.for_settings(settings)
    if snapshot_ref:
        snapshot_id = manifest.resolve(snapshot_ref)["id"]
    elif previous:
        snapshot_id = previous["snapshot_id"]  # "before this deploy" was decided by its first canary
    else:
        snapshot_id = snapshot_before_deploy(manifest.entries(), deploy_id, utc_now_iso())["id"]
    rec = {
        "deploy_id": deploy_id, "snapshot_id": snapshot_id, "run_id": run_id, "phase": "watching",
        "started_at": utc_now_iso(), "started_ts": now,
        "deadline_ts": now + settings.ready_timeout_sec, "required": settings.ready_successes,
        "interval_sec": settings.ready_interval_sec, "auto_rollback": settings.canary_enabled,
        "successes": 0, "probes": 0, "last_probe": None, "not_ready_ts": None, "admission_attempts": 0,
        "runs": (previous or {}).get("runs", 0) + 1,
        # Kept across runs: the guarantee of at most one automatic rollback per deploy id.
        "rollback": (previous or {}).get("rollback"), "verdict": None,
    }
    _save(settings, rec)
    _log(settings, rec, "start", timeout_sec=f"{settings.ready_timeout_sec:g}", required=rec["required"],
         auto_rollback=str(rec["auto_rollback"]).lower())
    return rec


def snapshot_before_deploy(entries: list[dict], deploy_id: str, deploy_started_at: str) -> dict:
    """The snapshot the deploy hook took for this deploy (notes "... id=<deploy>"), else the newest
    snapshot taken before the deploy started."""
    before = [e for e in entries if e["created_at"] <= deploy_started_at]
    tagged = [e for e in before if (e.get("notes") or "").endswith(f"id={deploy_id}")]
    candidates = tagged or before
    if not candidates:
        raise SnapshotNotFound(f"no snapshot taken before deploy {deploy_id}: take one first "
                               f"(scripts/deploy_hook.sh pre)")
    return candidates[-1]


# -- phase: watching -----------------------------------------------------------------------------
def _watch(settings: Settings, rec: dict, start_restore: StartRestore, now: float) -> Outcome:
    ok, detail = probe(settings.readyz_url, timeout=min(5.0, rec["interval_sec"]))
    rec["probes"] += 1
    rec["last_probe"] = detail
    rec["successes"] = rec["successes"] + 1 if ok else 0
    if rec["successes"] >= rec["required"]:
        return _ready(settings, rec, now)
    if now >= rec["deadline_ts"]:
        return _not_ready(settings, rec, start_restore, now)
    left = rec["deadline_ts"] - now
    return Outcome(f"probe {rec['probes']}: {detail} ({rec['successes']}/{rec['required']} consecutive, "
                   f"{left:.0f} s left)", wait=min(rec["interval_sec"], max(left, 0.05)))


def _ready(settings: Settings, rec: dict, now: float) -> Outcome:
    check = {"status": "ok", "at": utc_now_iso(), "deploy_id": rec["deploy_id"]}
    try:
        Manifest.for_settings(settings).update(rec["snapshot_id"], ready_check=check)
    except SnapshotNotFound:
        pass  # pruned meanwhile: the verdict stands, there is just nothing to mark
    _log(settings, rec, "ready", probes=rec["probes"], elapsed_sec=f"{now - rec['started_ts']:.1f}")
    return _finish(rec, "ready", f"deploy {rec['deploy_id']} is ready ({rec['probes']} probe(s))")


def _not_ready(settings: Settings, rec: dict, start_restore: StartRestore, now: float) -> Outcome:
    rec["not_ready_ts"] = rec["not_ready_ts"] or now  # kept when a busy lock made us ask again
    previous = (rec.get("rollback") or {}).get("txn") or "(not started)"
    action = ("alert_only" if not rec["auto_rollback"] else
              "none_already_rolled_back" if rec.get("rollback") else "rollback")
    _log(settings, rec, "not_ready", probes=rec["probes"], last=rec["last_probe"], action=action)
    head = (f"Rollback canary: deploy {rec['deploy_id']} NOT READY after "
            f"{now - rec['started_ts']:.0f} s (last probe: {rec['last_probe']}).")
    if action == "alert_only":
        notify.send_alert(settings, f"{head} Automatic rollback is OFF (ROLLBACK_CANARY_ENABLED=false): nothing "
                                    f"was restored. To restore by hand: scripts/restore_all.sh --snapshot "
                                    f"{rec['snapshot_id']} --reason readyz_fail")
        return _finish(rec, "not_ready", "not ready; automatic rollback is off (alert only)")
    if action == "none_already_rolled_back":
        notify.send_alert(settings, f"{head} This deploy was already rolled back automatically once (txn "
                                    f"{previous}); not again. A human is needed.")
        return _finish(rec, "not_ready", f"not ready; already rolled back once ({previous}), not again")
    return _request_rollback(settings, rec, start_restore, head)


def _request_rollback(settings: Settings, rec: dict, start_restore: StartRestore, head: str) -> Outcome:
    # Recorded before the restore is requested: a crash in between costs the rollback, never doubles it.
    rec["rollback"] = {"requested_at": utc_now_iso(), "txn": None}
    _save(settings, rec)
    try:
        doc = start_restore(settings, rec["snapshot_id"])
    except LockHeld as exc:
        if _transient(settings) and rec["admission_attempts"] < ADMISSION_RETRIES:
            rec["rollback"] = None  # nothing was admitted: the next tick may ask again
            rec["admission_attempts"] += 1
            return Outcome(f"service busy ({exc}); asking for the rollback again", wait=1.0)
        return _rollback_not_started(settings, rec, head, str(exc))
    except RollbackError as exc:
        return _rollback_not_started(settings, rec, head, str(exc))
    rec["rollback"]["txn"] = doc["txn"]
    rec["phase"] = "restoring"
    notify.send_alert(settings, f"{head} Automatic rollback to snapshot {rec['snapshot_id']} started "
                                f"(restore {doc['txn']}).")
    return Outcome(f"not ready: automatic rollback {doc['txn']} to snapshot {rec['snapshot_id']} started",
                   wait=RESTORE_POLL_SEC)


def _transient(settings: Settings) -> bool:
    """The lock is held by a short operation (prune, cleanup, snapshot), not by another restore."""
    return ServiceLock(settings.backup_dir).active() is None


def _rollback_not_started(settings: Settings, rec: dict, head: str, error: str) -> Outcome:
    _log(settings, rec, "not_ready", phase="rollback_refused", error=error)
    notify.send_alert(settings, f"{head} The automatic rollback could not start: {error}. A human is needed.")
    return _finish(rec, "not_ready", f"not ready; the automatic rollback could not start: {error}", error=error)


# -- phase: restoring ------------------------------------------------------------------------------
def _follow_restore(settings: Settings, rec: dict, start_restore: StartRestore, now: float) -> Outcome:
    txn = rec["rollback"]["txn"]
    try:
        doc = Journal(settings.backup_dir).load(txn)
    except RollbackError as exc:  # removed by hand, or by a cleanup with PRE_RETENTION_DAYS=0
        doc = {"status": "failed", "error": f"{exc}: outcome unknown, see rollback.log"}
    if doc["status"] not in FINAL_STATES:
        return Outcome(f"automatic rollback {txn}: {doc.get('current_step') or doc['status']}",
                       wait=min(rec["interval_sec"], RESTORE_POLL_SEC))
    recovery = now - rec["not_ready_ts"]
    if is_success(doc["status"]):
        rec["restored_ts"] = rec.get("restored_ts") or now  # the recovery ends here, not when the report is done
        recovery = rec["restored_ts"] - rec["not_ready_ts"]
        report = discarded.load_summary(settings, txn)
        waited = now - rec["restored_ts"]
        if (report is None and waited < REPORT_GRACE_SEC) or (
                report and report.get("status") in (discarded.PENDING, discarded.RUNNING) and waited < REPORT_WAIT_SEC):
            return Outcome(f"automatic rollback {txn} succeeded; waiting for its discarded-writes report",
                           wait=RESTORE_POLL_SEC)
        warnings = list(doc.get("warnings") or [])
        _log(settings, rec, "rolled_back", txn=txn, recovery_sec=f"{recovery:.1f}", outcome=doc["status"])
        with_warnings = f" WITH WARNINGS: {'; '.join(warnings)}" if warnings else ""
        notify.send_alert(settings, f"Rollback canary: deploy {rec['deploy_id']} was rolled back automatically to "
                                    f"snapshot {rec['snapshot_id']} (restore {txn}); ready again "
                                    f"{recovery:.1f} s after the not-ready verdict{with_warnings}. "
                                    f"{discarded.describe(report, txn)}")
        return _finish(rec, "rolled_back", f"rolled back by {txn}; ready again after {recovery:.1f} s"
                                           + (f" ({doc['status']}: {'; '.join(warnings)})" if warnings else ""),
                       recovery_sec=round(recovery, 3), restore_status=doc["status"], warnings=warnings)
    # The restored app did not become ready (or the restore failed): stop here, never loop.
    error = doc.get("error") or "restore failed"
    _log(settings, rec, "not_ready", phase="after_rollback", txn=txn, error=error)
    notify.send_alert(settings, f"Rollback canary: the automatic rollback of deploy {rec['deploy_id']} "
                                f"({txn}) FAILED: {error}. Stopped; no further automatic rollback. "
                                f"See `python -m manage.rollback status {txn}`.")
    return _finish(rec, "not_ready", f"automatic rollback {txn} failed: {error}", error=error)


# -- verdicts ---------------------------------------------------------------------------------------
def _verdict(rec: dict, status: str) -> dict:
    return {"deploy_id": rec["deploy_id"], "status": status, "snapshot_id": rec["snapshot_id"],
            "probes": rec["probes"], "successes": rec["successes"], "last_probe": rec["last_probe"],
            "auto_rollback": rec["auto_rollback"], "rollback_txn": (rec.get("rollback") or {}).get("txn"),
            "not_ready_ts": rec.get("not_ready_ts")}


def _finish(rec: dict, status: str, message: str, **extra) -> Outcome:
    rec["phase"] = "done"
    rec["verdict"] = dict(_verdict(rec, status), message=message, finished_at=utc_now_iso(), **extra)
    return Outcome(message, verdict=rec["verdict"])


def _log(settings: Settings, rec: dict, status: str, **fields) -> None:
    logbook.append(settings.rollback_log, logbook.format_event(
        "CANARY", deploy=rec["deploy_id"], status=status, snapshot=rec["snapshot_id"], **fields))
