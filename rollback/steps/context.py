"""What a step is given: settings, its transaction, the snapshot, the journal and a progress callback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..journal import Journal
from ..settings import Settings


class Progress(Protocol):
    def __call__(self, done: int, total: int, message: str) -> None: ...


def no_progress(done: int, total: int, message: str) -> None:
    return None


@dataclass
class StepContext:
    settings: Settings
    txn: str
    step: str
    snapshot: dict
    journal: Journal
    progress: Callable[[int, int, str], None] = no_progress

    @property
    def snapshot_dir(self) -> Path:
        return self.settings.backup_dir / self.snapshot["id"]

    def artifact_path(self, name: str) -> Path:
        return self.snapshot_dir / self.snapshot["artifacts"][name]["file"]

    def marks(self) -> dict:
        return self.journal.load(self.txn)["marks"]

    def mark(self, key: str, value) -> None:
        """Record durably how far this step got, so a re-run can resume or undo."""
        self.journal.mark(self.txn, key, value)
