"""Per-transaction journal: BACKUP_DIR/journal/<txn>.json, rewritten atomically on every event.

It is the truth about a restore: which steps started, which ended, and the marks a step leaves
to resume where it stopped (e.g. "the pre-restore database copy exists"). Celery's result backend
only mirrors it for display. States are typed (`StepState`, `TxnStatus`) and stored as their plain
words ("ok", "failed", ...).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .errors import RollbackError
from .fsutil import atomic_write_bytes
from .ids import utc_now_iso, validate_txn_id
from .manifest import ensure_private_dir

RESTORE_STEPS = ("preflight", "db", "data", "code", "readyz")


class _Word(str, Enum):
    """A state stored as its plain word in the journal's JSON (and printed as that word)."""

    def __str__(self) -> str:
        return self.value


class StepState(_Word):
    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped half-way; the transaction keeps the service until resumed


class TxnStatus(_Word):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # Reached its end through a degraded path (e.g. a clean-slate fallback instead of the Alembic
    # downgrade): never reported as plain `succeeded`.
    SUCCEEDED_WITH_WARNINGS = "succeeded_with_warnings"
    FAILED = "failed"


SUCCESS_STATES = (TxnStatus.SUCCEEDED, TxnStatus.SUCCEEDED_WITH_WARNINGS)
FINAL_STATES = (*SUCCESS_STATES, TxnStatus.FAILED)


def is_success(status: str | None) -> bool:
    """True for a finished restore whose every step ended ok, with or without warnings."""
    return status in SUCCESS_STATES


def success_status(doc: dict) -> TxnStatus:
    """The final status of a restore whose every step is ok: warnings make it a degraded success."""
    return TxnStatus.SUCCEEDED_WITH_WARNINGS if doc["warnings"] else TxnStatus.SUCCEEDED


def step_state(doc: dict, step: str) -> StepState:
    return StepState(doc["steps"][step]["status"])


def all_steps_ok(doc: dict) -> bool:
    return all(step_state(doc, step) is StepState.OK for step in RESTORE_STEPS)


def steps_left(doc: dict) -> list[str]:
    """The steps not yet ok, in order."""
    return [step for step in RESTORE_STEPS if step_state(doc, step) is not StepState.OK]


class Journal:
    def __init__(self, backup_dir: Path):
        self.dir = Path(backup_dir) / "journal"

    def path(self, txn: str) -> Path:
        return self.dir / f"{validate_txn_id(txn)}.json"

    def create(self, txn: str, **fields) -> dict:
        ensure_private_dir(self.dir)
        doc = {
            "txn": txn,
            "status": TxnStatus.PENDING,
            "created_at": utc_now_iso(),
            "updated_at": utc_now_iso(),
            "attempt": 1,
            "error": None,
            "steps": {name: {"status": StepState.PENDING} for name in RESTORE_STEPS},
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
        lines = doc[key]
        if text not in lines:  # a step re-run after an interruption says the same thing again
            lines.append(text)
            self._write(doc)
        return doc

    def step_started(self, txn: str, step: str) -> dict:
        doc = self.load(txn)
        entry = doc["steps"][step]
        entry.update(status=StepState.RUNNING, started_at=utc_now_iso(), _t0=time.time(), error=None)
        entry["runs"] = entry.get("runs", 0) + 1
        doc["status"] = TxnStatus.RUNNING
        doc["current_step"] = step
        self._write(doc)
        return doc

    def step_finished(self, txn: str, step: str, state: StepState | str, detail: str = "",
                      error: str | None = None) -> dict:
        doc = self.load(txn)
        entry = doc["steps"][step]
        t0 = entry.pop("_t0", None)
        entry.update(status=StepState(state), ended_at=utc_now_iso(), detail=detail, error=error)
        if t0 is not None:
            entry["duration_sec"] = round(time.time() - t0, 3)
        self._write(doc)
        return doc

    def finish(self, txn: str, status: TxnStatus | str, error: str | None = None) -> dict:
        doc = self.load(txn)
        status = TxnStatus(status)
        if status not in FINAL_STATES:
            raise RollbackError(f"journal of {txn}: {status} is not a final status")
        # finished_ts: sub-second order for PRE_RETENTION_COUNT (finished_at has whole seconds)
        doc.update(status=status, error=error, finished_at=utc_now_iso(), finished_ts=time.time(), current_step=None)
        self._write(doc)
        return doc


def total_duration(doc: dict) -> float | None:
    """The summed duration of the steps that ran, or None when none did."""
    durations = [s.get("duration_sec") for s in doc["steps"].values() if s.get("duration_sec") is not None]
    return round(sum(durations), 3) if durations else None


def step_summary(doc: dict) -> list[dict]:
    """The per-step view shown by the CLI, the UI and the final task result."""
    return [
        {
            "step": name,
            "status": doc["steps"][name]["status"],
            "duration_sec": doc["steps"][name].get("duration_sec"),
            "detail": doc["steps"][name].get("detail", ""),
            "error": doc["steps"][name].get("error"),
        }
        for name in RESTORE_STEPS
    ]


@dataclass(frozen=True)
class RestoreResult:
    """The outcome of a restore as adapters show it: `status` is succeeded, succeeded_with_warnings or
    failed (or a running state); `warnings` say what was degraded, `notes` are informational lines."""

    txn: str
    status: str
    snapshot_id: str | None
    reason: str | None
    error: str | None
    steps: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_journal(cls, doc: dict) -> "RestoreResult":
        return cls(txn=doc["txn"], status=doc["status"], snapshot_id=doc.get("snapshot_id"),
                   reason=doc.get("reason"), error=doc.get("error"), steps=step_summary(doc),
                   warnings=list(doc["warnings"]), notes=list(doc["notes"]))

    @property
    def succeeded(self) -> bool:
        return is_success(self.status)

    def to_dict(self) -> dict:
        return {"txn": self.txn, "status": self.status, "snapshot_id": self.snapshot_id, "reason": self.reason,
                "error": self.error, "steps": self.steps, "warnings": list(self.warnings),
                "notes": list(self.notes)}
