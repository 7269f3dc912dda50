"""Item 1, exhaustively: kill -9 a `restore --local` at every durable transition, not just at random.

A dry run under strace lists, in order, every `rename` the restore process makes (each journal write,
the active.json claim, the data swap) and every statement that changes a database (CREATE, DROP,
ALTER ... RENAME sent to Postgres). Then, for each of those points, a restore runs under
`strace --inject=<syscall>:signal=SIGKILL:when=<n>`: the kernel kills it on entry to that very
syscall, so the transition never happens. After each kill:
- every component (database, data tree, code) must be whole: the state before or the snapshot's;
- `python -m manage.rollback resume <txn> --local` (or a new restore when nothing was admitted)
  must complete, with everything at the snapshot's state and the previous state kept.

CI runs the transitions that matter most (the two swaps, the last journal write) plus a random one;
FAULT_RUNS=full runs all of them.
"""

from __future__ import annotations

import random
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollback.journal import Journal
from rollback.lock import ServiceLock
from tests.conftest import ROOT, cli
from tests.faults import figures as F
from tests.faults.conftest import COMPONENTS, build_scenario, previous_state_lost, process_env

_LINE = re.compile(r'^(?P<call>renameat2|rename|sendto|unlink)\((?P<args>.*)\) = (?P<ret>-?\d+)')
SYSCALLS = ("rename", "renameat2", "sendto", "unlink")
DATA_SWAP = "data swap: exchange staging <-> live"
FINAL_WRITE = "journal write: succeeded"


@dataclass(frozen=True)
class KillPoint:
    syscall: str
    when: int  # the n-th call of that syscall in the restore process (among those on `path`, if set)
    label: str
    path: str | None = None  # strace -P: count only the calls on this path (unlinks of temp files vary)


def _restore_argv(scenario, reason: str) -> list[str]:
    return [sys.executable, "-m", "manage.rollback", "restore", "--snapshot", scenario.good["id"], "--reason", reason,
            "--yes", "--local"]


def _label(call: str, args: str, settings) -> str | None:
    if call == "unlink":
        return "active.json release" if args.endswith('active.json"') else None
    if call == "renameat2":
        return DATA_SWAP if "rollback-stage-" in args else f"renameat2 {args[:60]}"
    if call == "rename":
        if "rollback-stage-" in args and ".pre-txn-" in args:
            return "data swap: old tree -> pre"
        if re.search(r'/journal/txn-[^/"]+\.json"', args):  # not the discarded-writes report under journal/<txn>/
            return "journal write"
        if "active.json" in args:
            return "active.json claim"
        if "rollback-stage-" in args:
            return "data swap: staging -> live"
        if ".pre-txn-" in args:
            return "data swap: live -> pre"
        return f"rename {args[:60]}"
    live = settings.database.dbname
    if re.search(r'RENAME TO \\"' + re.escape(live) + r'\\"', args):
        return "db swap: new -> live"
    if "RENAME TO" in args:
        return "db swap: live -> pre"
    for stmt in ("CREATE DATABASE", "DROP DATABASE", "ALLOW_CONNECTIONS"):
        if stmt in args:
            return f"db: {stmt}"
    return None


def kill_points(scenario, env, tmp_path: Path) -> list[KillPoint]:
    """Trace one complete restore and list its transitions (then put `bad` back)."""
    trace = tmp_path / "dry-run.strace"
    done = subprocess.run(["strace", "-o", str(trace), "-s", "400", "-e", f"trace={','.join(SYSCALLS)}",
                           *_restore_argv(scenario, "dry run")], cwd=ROOT, env=process_env(env),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = dict.fromkeys(SYSCALLS, 0)
    active = str(scenario.settings.backup_dir / "active.json")
    releases = 0
    points = []
    for line in trace.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        counts[m["call"]] += 1
        label = _label(m["call"], m["args"], scenario.settings)
        if label == "active.json release":
            releases += 1
            points.append(KillPoint("unlink", releases, label, path=active))
        elif label:
            points.append(KillPoint(m["call"], counts[m["call"]], label))
    last = max(i for i, p in enumerate(points) if p.label == "journal write")
    points[last] = KillPoint(points[last].syscall, points[last].when, FINAL_WRITE)
    scenario.reset_to_bad()
    return points


def _choose(points: list[KillPoint], rng: random.Random) -> list[KillPoint]:
    if F.full_mode():
        return points
    chosen = [p for p in points if p.label in (DATA_SWAP, "data swap: old tree -> pre", "db swap: new -> live",
                                              "active.json release")]
    rest = [p for p in points if p not in chosen]
    return chosen + rng.sample(rest, min(len(rest), F.runs(1, 1)))


def _recover(scenario, env, reason: str) -> tuple[str, str | None]:
    """What an operator does after the crash: resume the txn, or restore again if none was admitted."""
    docs = [d for d in Journal(scenario.settings.backup_dir).all() if d.get("reason") == reason]
    doc = docs[-1] if docs else None
    if doc and doc["status"] not in ("succeeded", "failed"):
        done = cli(env, "resume", doc["txn"], "--local")
        return ("resumed" if done.returncode == 0 else f"resume exit {done.returncode}: "
                f"{(done.stderr + done.stdout).strip().splitlines()[-1:]}"), doc["txn"]
    if doc and doc["status"] == "succeeded":
        return "already succeeded", doc["txn"]
    again = f"re-run after {reason}"
    done = cli(env, *(_restore_argv(scenario, again)[3:]))
    txn = next(d["txn"] for d in Journal(scenario.settings.backup_dir).all() if d.get("reason") == again)
    return ("re-run" if done.returncode == 0 else f"re-run exit {done.returncode}"), txn


def _kill_at(scenario, env, point: KillPoint) -> tuple[dict, subprocess.CompletedProcess, str, str | None]:
    scenario.reset_to_bad()
    reason = f"kill point {point.syscall}#{point.when} {secrets.token_hex(3)}"
    trace = scenario.settings.backup_dir.parent / "kill-run.strace"
    done = subprocess.run(["strace", "-o", str(trace), "-s", "400", "-e", f"trace={point.syscall}",
                           *(["-P", point.path] if point.path else []),
                           "-e", f"inject={point.syscall}:signal=SIGKILL:when={point.when}",
                           *_restore_argv(scenario, reason)],
                          cwd=ROOT, env=process_env(env), capture_output=True, text=True, timeout=300)
    # The syscall the kernel was entering when the signal came: it must be the transition we meant.
    calls = [line for line in trace.read_text(errors="replace").splitlines() if line.startswith(point.syscall + "(")]
    hit = calls[-1] if len(calls) == point.when else f"{len(calls)} calls: {calls[-1:]}"
    m = re.match(r"^(\w+)\((.*?)(\) = .*| <unfinished \.\.\.>)?$", hit)
    landed = _label(m[1], m[2], scenario.settings) if m else None
    if landed != point.label and not (point.label == FINAL_WRITE and landed == "journal write"):
        moved = f"moved: {hit[:200]}"  # this run made a different number of calls; not this point
        return scenario.classify(), done, reason, moved
    return scenario.classify(), done, reason, None


def test_kill_at_every_transition_then_resume(settings, live_env, figures, tmp_path):
    rng = random.Random()
    scenario = build_scenario(settings)
    points = kill_points(scenario, live_env, tmp_path)
    assert any(p.label == DATA_SWAP for p in points), points
    assert any(p.label == "db swap: new -> live" for p in points), points
    chosen = _choose(points, rng)
    case = figures.case(1, f"kill -9 restore --local at each transition ({len(chosen)} of {len(points)})")
    failures = []
    for point in chosen:
        case.begin()
        at_kill, done, reason, moved = _kill_at(scenario, live_env, point)
        if moved:
            case.note(f"{point.label} ({point.syscall}#{point.when}) {moved}")
            case.run(f"kill point moved [{point.label}]")
            _recover(scenario, live_env, reason)
            continue
        assert done.returncode != 0, f"{point}: the restore was not killed"
        torn = sorted(c for c, v in at_kill.items() if v not in ("good", "bad"))
        if torn:
            case.note(f"{point.label} ({point.syscall}#{point.when}): {', '.join(torn)} absent until resumed")
        how, txn = _recover(scenario, live_env, reason)
        final = scenario.classify()
        lost = previous_state_lost(settings, txn, scenario.states[scenario.bad["id"]])
        whole = final == dict.fromkeys(COMPONENTS, "good") and ServiceLock(settings.backup_dir).active() is None
        outcome = (("torn, then " if torn else "") + how) if whole else f"NOT RECOVERED ({how})"
        case.run(f"{outcome} [{point.label}]", data_lost=lost)
        if torn or not whole or lost:
            failures.append((point, torn, how, final, lost))
    assert not failures, failures
    moved = sum(n for outcome, n in case.outcomes.items() if outcome.startswith("kill point moved"))
    assert moved <= max(1, len(chosen) // 10), case.notes


@pytest.mark.parametrize("component, label", [
    ("data", DATA_SWAP),
    ("data", "data swap: old tree -> pre"),
    ("db", "db swap: live -> pre"),
    ("db", "db swap: new -> live"),
])
def test_live_component_exists_after_a_kill_inside_its_swap(component, label, settings, live_env, tmp_path):
    scenario = build_scenario(settings)
    point = next(p for p in kill_points(scenario, live_env, tmp_path) if p.label == label)
    at_kill, _, reason, _moved = _kill_at(scenario, live_env, point)
    try:
        assert at_kill[component] in ("good", "bad"), at_kill
    finally:
        _recover(scenario, live_env, reason)


def test_resume_finishes_a_restore_killed_at_its_final_journal_write(settings, live_env, tmp_path):
    scenario = build_scenario(settings)
    point = next(p for p in kill_points(scenario, live_env, tmp_path) if p.label == FINAL_WRITE)
    _at_kill, _done, reason, _moved = _kill_at(scenario, live_env, point)
    how, txn = _recover(scenario, live_env, reason)
    try:
        assert how == "resumed", how
        assert Journal(settings.backup_dir).load(txn)["status"] == "succeeded"
        assert ServiceLock(settings.backup_dir).active() is None
    finally:
        settings.backup_dir.joinpath("active.json").unlink(missing_ok=True)
