"""Resources: one module per thing a snapshot protects — the database, the data tree, the code and
the app's processes. Each owns how its resource is dumped or archived, verified and restored; none
knows the operations (snapshot, standby, the restore transaction): those pass in what they decided.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..journal import Journal
from ..progress import Progress
from ..settings import Settings


class ResumableStep(Protocol):
    """What a resource's restore uses of the restore step running it (restore_steps.StepContext): its
    settings, transaction and snapshot, its progress, and the journal marks that let a re-run resume
    or undo."""

    settings: Settings
    txn: str
    snapshot: dict
    journal: Journal
    progress: Progress

    def artifact_path(self, name: str) -> Path: ...

    def marks(self) -> dict: ...

    def mark(self, key: str, value) -> None: ...
