"""Figures of the fault-injection and abuse suite: every case counts its runs, outcomes and data lost.

A test asks for the `figures` fixture, opens a case and records one line per run:

    case = figures.case("1", "kill -9 worker group, db step")
    case.run("resumed", data_lost=0)

At the end of the session every case prints one table line (test, runs, outcomes, data lost). With
FAULT_REPORT=<file> set, the cases are also appended to that file as JSON lines, which
`scripts/fault_suite.sh` turns into the table of docs/reliability.md.

How many times a case repeats comes from FAULT_RUNS (see `runs()`): CI runs the short form (small
default counts), `scripts/fault_suite.sh` the full one.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

FULL_RUNS = 20


def runs(short: int, full: int = FULL_RUNS) -> int:
    """Repetitions of a case: `short` by default, `full` when FAULT_RUNS=full, or FAULT_RUNS=<n> (capped by
    nothing: the operator asked for it)."""
    raw = os.environ.get("FAULT_RUNS", "").strip().lower()
    if not raw:
        return short
    if raw == "full":
        return full
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"FAULT_RUNS must be 'full' or a number, got {raw!r}") from None
    return max(1, value)


def full_mode() -> bool:
    return os.environ.get("FAULT_RUNS", "").strip().lower() == "full" or runs(0) >= FULL_RUNS


@dataclass
class Case:
    item: str  # the item number (1..11)
    name: str
    test: str = ""
    runs: int = 0
    outcomes: Counter = field(default_factory=Counter)
    data_lost: int = 0
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    created: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def begin(self) -> None:
        """Start timing one run (otherwise a run is timed from the previous one or the case's creation)."""
        self.started = time.monotonic()

    def run(self, outcome: str, data_lost: int = 0) -> None:
        """Record one run: its outcome (a short word) and how many items of data it lost (must be 0)."""
        self.runs += 1
        self.outcomes[outcome] += 1
        self.data_lost += data_lost
        now = time.monotonic()
        self.seconds += now - self.started
        self.started = now

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def outcome_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: (-kv[1], kv[0])))

    def line(self) -> str:
        return (f"FIGURES | {self.item:>2} | {self.name} | runs {self.runs} | {self.outcome_text() or '-'} | "
                f"data lost {self.data_lost} | {self.seconds:.1f}s")

    def as_json(self) -> dict:
        return {"item": self.item, "name": self.name, "test": self.test, "runs": self.runs,
                "outcomes": dict(self.outcomes), "data_lost": self.data_lost, "notes": self.notes,
                "seconds": round(self.seconds, 1), "fault_runs": os.environ.get("FAULT_RUNS", "")}


_CASES: list[Case] = []
_printed = False


class Figures:
    """Per-test recorder handed out by the `figures` fixture."""

    def __init__(self, test: str):
        self.test = test
        self.cases: list[Case] = []

    def case(self, item: str | int, name: str) -> Case:
        case = Case(str(item), name, test=self.test)
        self.cases.append(case)
        _CASES.append(case)
        return case

    def close(self) -> None:
        for case in self.cases:
            if not case.seconds:  # counted by hand (runs set directly): time it from its creation
                case.seconds = time.monotonic() - case.created
            print(case.line())  # shown with -s / -rA; the terminal summary shows all of them anyway
            path = os.environ.get("FAULT_REPORT")
            if path:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(case.as_json(), ensure_ascii=False) + "\n")


def terminal_summary(terminalreporter) -> None:
    """Print every case once, whichever of the suite's conftests asks first."""
    global _printed
    if _printed or not _CASES:
        return
    _printed = True
    terminalreporter.section("fault-injection figures (item | case | runs | outcomes | data lost)")
    for case in _CASES:
        terminalreporter.write_line(case.line())
        for note in case.notes[:5]:
            terminalreporter.write_line(f"        note: {note}")
