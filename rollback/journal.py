"""Per-transaction journal: BACKUP_DIR/journal/<txn>.json, rewritten atomically on every event.

It is the truth about a restore: which steps started, which ended, and the marks a step leaves
to resume where it stopped (e.g. "the pre-restore database copy exists"). Celery's result backend
only mirrors it for display.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import RollbackError
from .fsutil import atomic_write_bytes
from .ids import utc_now_iso, validate_txn_id
from .manifest import ensure_private_dir

RESTORE_STEPS = ("preflight", "db", "data", "code", "readyz")
# A restore that reached its end but took a degraded path (e.g. a clean-slate fallback instead of the
# Alembic downgrade) is `succeeded_with_warnings`, never plain `succeeded`.
SUCCESS_STATES = ("succeeded", "succeeded_with_warnings")
FINAL_STATES = (*SUCCESS_STATES, "failed")


def is_success(status: str | None) -> bool:
    """True for a finished restore whose every step ended ok, with or without warnings."""
    return status in SUCCESS_STATES


def success_status(doc: dict) -> str:
    """The final status of a restore whose every step is ok: warnings make it a degraded success."""
    return "succeeded_with_warnings" if doc.get("warnings") else "succeeded"


class Journal:
    def __init__(self, backup_dir: Path):
        self.dir = Path(backup_dir) / "journal"

    def path(self, txn: str) -> Path:
        return self.dir / f"{validate_txn_id(txn)}.json"

    def create(self, txn: str, **fields) -> dict:
        ensure_private_dir(self.dir)
        doc = {
            "txn": txn,
            "status": "pending",
            "created_at": utc_now_iso(),
            "updated_at": utc_now_iso(),
            "attempt": 1,
            "error": None,
            "steps": {name: {"status": "pending"} for name in RESTORE_STEPS},
            "marks": {},
            "warnings": [],  # a degraded path was taken: the restore cannot end plain `succeeded`
            "notes": [],  # informational lines for the operator (e.g. the app was not restarted)
            **fields,
        }
        self._write(doc)
        return doc

    def load(self, txn: str) -> dict:
        try:
            return json.loads(self.path(txn).read_text())
        except FileNotFoundError:
            raise RollbackError(f"no journal for transaction {txn}") from None
        except ValueError:
            raise RollbackError(f"journal of {txn} is unreadable") from None

    def all(self) -> list[dict]:
        docs = []
        for path in sorted(self.dir.glob("txn-*.json")) if self.dir.exists() else []:
            try:
                docs.append(json.loads(path.read_text()))
            except ValueError:
                continue  # reported by `show`, never fatal for listing
        return docs

    def _write(self, doc: dict) -> None:
        doc["updated_at"] = utc_now_iso()
        try:
            atomic_write_bytes(self.path(doc["txn"]), json.dumps(doc, indent=2).encode(), mode=0o600)
        except OSError as exc:
            # ENOSPC, EROFS, EIO: a typed, one-line error. The previous version of the journal stays, so a
            # resume after the cause is fixed continues from the last recorded event.
            raise RollbackError(f"cannot write the journal of {doc['txn']} ({exc.strerror or exc}); "
                                f"fix the cause, then: python -m manage.rollback resume {doc['txn']}") from None

    def update(self, txn: str, **fields) -> dict:
        doc = self.load(txn)
        doc.update(fields)
        self._write(doc)
        return doc

    def mark(self, txn: str, key: str, value) -> dict:
        doc = self.load(txn)
        doc["marks"][key] = value
        self._write(doc)
        return doc

    def add_warning(self, txn: str, text: str) -> dict:
        """Record a degraded outcome; the restore then ends `succeeded_with_warnings`."""
        return self._append(txn, "warnings", text)

    def add_note(self, txn: str, text: str) -> dict:
        """Record an informational line shown with the outcome; it does not change the status."""
        return self._append(txn, "notes", text)

    def _append(self, txn: str, key: str, text: str) -> dict:
        doc = self.load(txn)
        lines = doc.setdefault(key, [])
        if text not in lines:  # a step re-run after an interruption says the same thing again
            lines.append(text)
            self._write(doc)
        return doc

    def step_started(self, txn: str, step: str) -> dict:
        doc = self.load(txn)
        entry = doc["steps"][step]
        entry.update(status="running", started_at=utc_now_iso(), _t0=time.time(), error=None)
        entry["runs"] = entry.get("runs", 0) + 1
        doc["status"] = "running"
        doc["current_step"] = step
        self._write(doc)
        return doc

    def step_finished(self, txn: str, step: str, status: str, detail: str = "", error: str | None = None) -> dict:
        doc = self.load(txn)
        entry = doc["steps"][step]
        t0 = entry.pop("_t0", None)
        entry.update(status=status, ended_at=utc_now_iso(), detail=detail, error=error)
        if t0 is not None:
            entry["duration_sec"] = round(time.time() - t0, 3)
        self._write(doc)
        return doc

    def finish(self, txn: str, status: str, error: str | None = None) -> dict:
        doc = self.load(txn)
        # finished_ts: sub-second order for PRE_RETENTION_COUNT (finished_at has whole seconds)
        doc.update(status=status, error=error, finished_at=utc_now_iso(), finished_ts=time.time(), current_step=None)
        self._write(doc)
        return doc


def step_summary(doc: dict) -> list[dict]:
    """The per-step view shown by the CLI, the UI and the final task result."""
    return [
        {
            "step": name,
            "status": doc["steps"][name].get("status", "pending"),
            "duration_sec": doc["steps"][name].get("duration_sec"),
            "detail": doc["steps"][name].get("detail", ""),
            "error": doc["steps"][name].get("error"),
        }
        for name in RESTORE_STEPS
    ]
