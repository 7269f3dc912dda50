"""The one progress type of the core (restic's progress.go in small).

A `Progress` forwards (step, done, total, message) to a sink: the CLI's printer, the Celery task's
state, a test's recorder. Code that works for one step receives `progress.scoped("db")` and reports
with `progress(done, total, message)`; code that counts bytes uses `progress.bytes(n, total, verb)`.
Nobody has to write a no-op function: `NO_PROGRESS` drops everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

Sink = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class Progress:
    sink: Optional[Sink] = None
    step: str = ""
    # A part of a larger whole: (offset, span) of the step's own scale; e.g. verifying the
    # artifacts is the first half of the preflight.
    part: tuple[float, float] = (0.0, 1.0)

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.sink is None:
            return
        offset, span = self.part
        if total and (offset, span) != (0.0, 1.0):
            scale = 1000
            done, total = int(scale * (offset + span * done / total)), scale
        self.sink(self.step, done, total, message)

    def report(self, step: str, done: int, total: int, message: str) -> None:
        """Report for a named step (a caller that drives several steps)."""
        self.scoped(step)(done, total, message)

    def scoped(self, step: str) -> "Progress":
        return Progress(self.sink, step, (0.0, 1.0))

    def fraction(self, offset: float, span: float) -> "Progress":
        """This progress as the part [offset, offset + span] of the step's bar."""
        base_offset, base_span = self.part
        return Progress(self.sink, self.step, (base_offset + base_span * offset, base_span * span))

    def bytes(self, done: int, total: int, verb: str) -> None:
        """A byte count, shown in MiB: "pg_dump: 12 MiB written"."""
        self(done if total else 0, total, f"{verb}: {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""))


NO_PROGRESS = Progress()


def as_progress(value: "Progress | Sink | None") -> Progress:
    """Accept a Progress or a bare 4-argument sink (the CLI's printer, a task reporter)."""
    if value is None:
        return NO_PROGRESS
    return value if isinstance(value, Progress) else Progress(value)
