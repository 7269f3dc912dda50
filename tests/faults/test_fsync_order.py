"""Item 11: power loss during the data swap (and during any durable write). A restore and a snapshot run
under `strace -ff -ttt -y -e trace=fsync,fdatasync,syncfs,rename,renameat,renameat2,execve`; the recorded
syscall order must show, for every rename our process makes:

- before it: the data being renamed is on disk: an fsync of the file (a temp file), or for a folder an
  fsync of every file in it and of the folder itself, or a syncfs of its filesystem (the staging tree);
- after it, before the next rename: an fsync of the directory that now holds the name (and of the one
  that lost it, when they differ).

A rename whose data are not synced before can leave, after a power cut, a complete-looking name with
empty content; a rename not followed by a directory fsync can be undone by the power cut after the
journal already says it happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faults.conftest import build_scenario, process_env

TRACED = "fsync,fdatasync,syncfs,rename,renameat,renameat2,execve"
_LINE = re.compile(r"^(?P<t>\d+\.\d+) (?P<call>\w+)\((?P<args>.*)\) += (?P<ret>-?\d+)")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Event:
    t: float
    pid: int
    call: str
    paths: list[str]


def trace(argv: list[str], env: dict, out: Path) -> list[Event]:
    prefix = out / "trace"
    done = subprocess.run(["strace", "-ff", "-ttt", "-y", "-s", "4096", "-e", f"trace={TRACED}", "-o", str(prefix),
                           *argv], cwd=ROOT, env=process_env(env), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    events = []
    for path in out.glob("trace.*"):
        pid = int(path.suffix[1:])
        for line in path.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if not m or int(m["ret"]) < 0:
                continue
            args = m["args"]
            if m["call"] in ("fsync", "fdatasync", "syncfs"):
                fd = _FD_PATH.match(args)
                paths = [fd["path"]] if fd else []
            else:
                paths = [bytes(s, "utf-8").decode("unicode_escape") for s in _STR.findall(args)]
                if m["call"] == "execve":
                    paths = [" ".join(paths[1:])]  # the argv, e.g. "git -C /repo reset --hard ..."
            events.append(Event(float(m["t"]), pid, m["call"], paths))
    events.sort(key=lambda e: e.t)
    return events


def main_pid(out: Path) -> int:
    return min(int(p.suffix[1:]) for p in out.glob("trace.*"))


def our_process(events: list[Event], out: Path) -> set[int]:
    """The traced program's own threads: the first task and every task that never exec'd (the
    dump, archive and pre-extraction threads sync what they write; pg_dump, tar, git exec)."""
    main = main_pid(out)
    exec_tids = {e.pid for e in events if e.call == "execve" and e.pid != main}
    return {int(p.suffix[1:]) for p in out.glob("trace.*")} - exec_tids


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_renames(events: list[Event], tids: set[int], final_listing) -> tuple[list[str], list[str]]:
    """(problems, renames checked) for every rename made by the threads `tids` of our process; a sync
    by any of them counts (a file synced by the thread that wrote it, renamed by another)."""
    mine = [e for e in events if e.pid in tids]
    problems, checked = [], []
    for i, e in enumerate(mine):
        if e.call not in ("rename", "renameat", "renameat2"):
            continue
        src, dst = e.paths[0], e.paths[-1]
        checked.append(f"{src} -> {dst}")
        before = [x for x in mine[:i] if x.call in ("fsync", "fdatasync", "syncfs")]
        after = []
        for x in mine[i + 1:]:
            if x.call.startswith("rename"):
                break
            if x.call in ("fsync", "fdatasync", "syncfs"):
                after.append(x)
        # after: the directories that gained and lost the name
        for folder in {os.path.dirname(dst), os.path.dirname(src)}:
            if not any(x.paths and x.paths[0] == folder for x in after):
                problems.append(f"no fsync of {folder} after rename {src} -> {dst}")
        # before: the data
        is_dir = final_listing(dst) is not None
        if not is_dir:
            temp = ".tmp-" in os.path.basename(src) or src.endswith(".partial")
            if temp and not any(x.paths and x.paths[0] == src for x in before):
                problems.append(f"rename {src} -> {dst}: the temp file was never fsynced before")
            continue
        if any(x.call == "syncfs" and x.paths and (_under(x.paths[0], src)) for x in before):
            continue
        # a file renamed into the folder later (the index written after the snapshot) is checked by its own rename
        arrived_later = {x.paths[-1] for x in mine[i + 1:] if x.call.startswith("rename") and x.paths}
        files = [f for f in final_listing(dst) if os.path.join(dst, f) not in arrived_later]
        synced = {x.paths[0] for x in before if x.paths}
        for x in mine[:i]:  # a file synced under its temp name, then renamed into place, is synced
            if x.call.startswith("rename") and x.paths[0] in synced:
                synced.add(x.paths[-1])
        if ".tmp-" in src or "rollback-stage" in src:  # a folder we filled: every file and itself
            missing = [f for f in files if os.path.join(src, f) not in synced and
                       not any(_under(os.path.join(src, f), s) for s in synced if s.endswith(f))]
            if missing or src not in synced:
                problems.append(f"folder rename {src} -> {dst}: not synced before ({missing[:3]}, folder "
                                f"{'ok' if src in synced else 'not fsynced'})")
    return problems, checked


def listing(path: str):
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        return sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    return None


def test_every_rename_of_a_restore_is_synced_before_and_after(settings, live_env, tmp_path, figures):
    case = figures.case(11, "restore --local under strace: sync before and after every rename")
    scenario = build_scenario(settings)
    out = tmp_path / "strace-restore"
    out.mkdir()
    events = trace([sys.executable, "-m", "manage.rollback", "restore", "--snapshot", scenario.good["id"],
                    "--reason", "strace", "--yes", "--local"], live_env, out)
    problems, checked = check_renames(events, our_process(events, out), listing)
    swap = [c for c in checked if "rollback-stage" in c or ".pre-txn" in c]
    assert len(swap) == 2, checked  # the data swap's two renames were seen
    case.run("ordered" if not problems else "MISSING SYNC", data_lost=len(problems))
    case.note(f"{len(checked)} renames checked (journal, active.json, data swap)")
    assert not problems, problems


def test_every_rename_of_a_snapshot_is_synced_before_and_after(settings, live_env, tmp_path, figures):
    case = figures.case(11, "snapshot --local under strace (folder + manifest.json): sync before and after")
    out = tmp_path / "strace-snapshot"
    out.mkdir()
    events = trace([sys.executable, "-m", "manage.rollback", "snapshot", "--local"], live_env, out)
    problems, checked = check_renames(events, our_process(events, out), listing)
    assert any(c.endswith("/manifest.json") for c in checked), checked
    assert any(re.search(r"/\.tmp-[^/]+ -> .*/\d{8}T\d{6}Z-[0-9a-f]{6}$", c) for c in checked), checked
    # --local indexes the archive before it returns: the listing and the summary are renamed into place too
    assert any(c.endswith("/data-listing.jsonl") for c in checked) and any(c.endswith("/data-summary.json") for c in checked)
    case.run("ordered" if not problems else "MISSING SYNC", data_lost=len(problems))
    case.note(f"{len(checked)} renames checked (snapshot.json, snapshot folder, manifest.json, the index's two files)")
    assert not problems, problems


def test_the_code_step_syncs_the_working_tree_before_it_is_recorded(settings, live_env, tmp_path):
    scenario = build_scenario(settings)
    out = tmp_path / "strace-code"
    out.mkdir()
    events = trace([sys.executable, "-m", "manage.rollback", "restore", "--snapshot", scenario.good["id"],
                    "--reason", "strace code", "--yes", "--local"], live_env, out)
    pid = main_pid(out)
    resets = [e for e in events if e.call == "execve" and e.paths and "git" in e.paths[0]]
    reset_pids = {e.pid for e in events if e.call == "execve" and e.paths and "reset" in " ".join(e.paths)}
    assert resets, "no git child was seen"
    last_reset_t = max((e.t for e in events if e.pid in reset_pids), default=None)
    assert last_reset_t is not None, [e.paths for e in resets]
    repo = str(settings.app_repo_dir)
    next_journal = next(e for e in events if e.pid == pid and e.t > last_reset_t and e.call.startswith("rename")
                        and "/journal/" in e.paths[-1])
    synced = [e for e in events if last_reset_t <= e.t <= next_journal.t and e.call in ("syncfs", "fsync")
              and e.paths and (_under(e.paths[0], repo) or e.call == "syncfs")]
    assert synced, "nothing synced the working tree between git reset and the journal write"
