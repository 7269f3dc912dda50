"""Item 8: archive attacks. A corpus of more than 200 hostile archives ('..', absolute paths, symlink and
hardlink chains, hardlink-to-symlink, devices, FIFOs, very long names, 10 000:1 bombs, parser
differentials between Python's tarfile and GNU tar) goes through `scan_archive` and through
`extract_archive` (GNU tar after our scan), each into a staging folder deep inside a sandbox.

Measured for every archive and path: writes outside the staging folder (the whole sandbox, the
victim directory the attacks aim at, `/` and `/etc/cron.d` are watched), links that point outside it
(symlinks resolving out, hardlinks to an outside inode), and the size cap. All must be 0. The
expected verdict is a refusal; an archive that is extracted must have stayed inside the rules.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from rollback.archive import MAX_DEPTH, extract_archive, remove_tree, scan_archive
from rollback.archive.policy import MemberPolicy
from rollback.errors import CommandFailed, IntegrityError, UnsafeArchive
from tests.faults import figures as F
from tests.security.hostile_archives import build_corpus

DEPTH = 48  # deeper than any '..' climb in the corpus: every relative escape lands inside the sandbox


def walk(root: Path, skip: Path | None = None):
    """(dirpath, names) without recursion (os.walk recurses in 3.11; the corpus nests 1100 folders deep)."""
    stack = [str(root)]
    while stack:
        top = stack.pop()
        try:
            names = sorted(os.listdir(top))
        except OSError:
            continue
        if skip is not None and top == str(skip.parent):
            names = [n for n in names if n != skip.name]
        yield top, names
        for name in names:
            p = os.path.join(top, name)
            if stat.S_ISDIR(os.lstat(p).st_mode):
                stack.append(p)


def snapshot_tree(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    out = {}
    for dirpath, names in walk(root, skip):
        for name in names:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_nlink,
                      os.readlink(p) if stat.S_ISLNK(st.st_mode) else "")
    return out


def top_level() -> tuple:
    return tuple(sorted(os.listdir("/"))), tuple(sorted(os.listdir("/etc/cron.d"))) if os.path.isdir(
        "/etc/cron.d") else ()


def links_outside(staging: Path, outside_inodes: set[int]) -> list[str]:
    bad = []
    real_root = os.path.realpath(staging)
    for dirpath, names in walk(staging):
        for name in names:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(p)
                if not (target == real_root or target.startswith(real_root + os.sep)):
                    bad.append(f"{p} -> {os.readlink(p)}")
            elif st.st_ino in outside_inodes:
                bad.append(f"{p} is a hardlink to an outside file")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                bad.append(f"{p} is a special file")
    return bad


def regular_bytes(staging: Path) -> int:
    total, seen = 0, set()
    for dirpath, names in walk(staging):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


@pytest.fixture
def sandbox(tmp_path):
    root = tmp_path / "sandbox"
    deep = root.joinpath(*(f"l{i}" for i in range(DEPTH)))
    work = deep / "work"
    work.mkdir(parents=True)
    victim = root / "victim"
    victim.mkdir()
    (victim / "victim.txt").write_text("must never change")
    return root, work, victim


def test_hostile_archives_are_contained(sandbox, figures):
    root, work, victim = sandbox
    seed = random.randrange(1 << 30)
    corpus = build_corpus(str(victim), seed, F.runs(160, 600))
    assert len(corpus) >= 200
    outside_inodes = {os.lstat(victim / "victim.txt").st_ino}
    archives = root / "archives"
    archives.mkdir()
    cases = {engine: figures.case(8, f"hostile archives through {engine} ({len(corpus)} archives, seed {seed})")
             for engine in ("scan_archive", "extract (GNU tar engine)")}
    before_top = top_level()
    violations = []
    for i, (name, blob, max_bytes) in enumerate(corpus):
        path = archives / f"{i:04d}.tar"
        path.write_bytes(blob)
        digest = hashlib.sha256(blob).hexdigest()
        for engine, case in cases.items():
            case.begin()
            staging = work / f"stage-{i}-{engine.split()[-2] if 'extract' in engine else 'scan'}"
            before = snapshot_tree(root, skip=staging)
            outcome, extracted_bytes, bad_links = "accepted", 0, []
            try:
                if engine == "scan_archive":
                    scan_archive(path, max_bytes=max_bytes)
                else:
                    extract_archive(path, staging, expected_sha256=digest, expected_size=len(blob), max_bytes=max_bytes)
                    bad_links = links_outside(staging, outside_inodes)
                    extracted_bytes = regular_bytes(staging)
            except UnsafeArchive:
                outcome = "refused: unsafe member"
            except IntegrityError:
                outcome = "refused: corrupt/invalid archive"
            except CommandFailed:
                outcome = "refused: GNU tar failed"
            except OSError as exc:
                outcome = f"refused: OSError {exc.errno}"
            after = snapshot_tree(root, skip=staging)
            # The staging folder's parent changes its own mtime when staging comes and goes: not a write outside.
            writes_outside = sorted(set(after) ^ set(before)) + [p for p in before if p in after and before[p] != after[p]
                                                                  and p != str(staging.parent)]
            over_cap = extracted_bytes > max(max_bytes, 0)
            lost = len(writes_outside) + len(bad_links) + int(over_cap)
            if outcome == "accepted" and not lost:
                outcome = "extracted, contained" if engine != "scan_archive" else "accepted (harmless)"
            case.run(outcome, data_lost=lost)
            if lost:
                violations.append((name, engine, writes_outside[:3], bad_links[:3], extracted_bytes, max_bytes))
            if staging.exists():
                try:
                    remove_tree(staging)
                except RecursionError:
                    case.note("rollback.archive.remove_tree: RecursionError on a deeply nested tree "
                              "(test_remove_tree_handles_deep_trees)")
                    subprocess.run(["rm", "-rf", "--", str(staging)], check=True)
            assert not staging.exists()
        path.unlink()
    for case in cases.values():
        case.note("data lost = writes outside staging + links pointing outside + size caps exceeded")
    assert top_level() == before_top
    assert (victim / "victim.txt").read_text() == "must never change"
    assert os.lstat(victim / "victim.txt").st_nlink == 1
    assert not violations, "\n".join(map(str, violations))


def test_what_the_corpus_lets_through_is_harmless(sandbox):
    """The few archives the policy accepts are listed here on purpose, so a change of policy is seen."""
    root, work, victim = sandbox
    corpus = build_corpus(str(victim), 0, 0)
    accepted = []
    for i, (name, blob, max_bytes) in enumerate(corpus):
        path = root / f"{i}.tar"
        path.write_bytes(blob)
        try:
            scan_archive(path, max_bytes=max_bytes)
        except (UnsafeArchive, IntegrityError):
            continue
        accepted.append(name.rsplit(" [", 1)[0])
    assert set(accepted) <= {"component longer than NAME_MAX", "setuid root binary", "setgid directory",
                             "path of 2200 bytes in 1100 folders", "only zeros", "symlink target with a NUL",
                             "two pax headers, second with '..'"}, accepted


def test_setuid_bits_are_not_restored(sandbox):
    """A set-id program is refused (a restore as root would plant it); a setgid directory is kept as it was."""
    from tests.security.hostile_archives import compress, d, file, tar

    root, work, _victim = sandbox
    for label, members in (("suid file", [file("suid", b"#!/bin/sh\nid\n", mode=0o4755)]),
                           ("sgid file", [file("sgid-file", b"x", mode=0o2755)]),
                           ("suid dir", [d("suid-dir", mode=0o4755)])):
        blob = compress(tar(members), "gzip")
        path = root / f"{label.replace(' ', '-')}.tar.gz"
        path.write_bytes(blob)
        staging = work / label.replace(' ', '-')
        with pytest.raises(UnsafeArchive, match="set-user/group-ID"):
            extract_archive(path, staging, expected_sha256=hashlib.sha256(blob).hexdigest(), expected_size=len(blob),
                            max_bytes=1 << 20)
        assert not staging.exists(), label
    blob = compress(tar([d("shared", mode=0o2775), file("shared/a", b"a", mode=0o644)]), "gzip")
    path = root / "sgid-dir.tar.gz"
    path.write_bytes(blob)
    staging = work / "sgid-dir"
    extract_archive(path, staging, expected_sha256=hashlib.sha256(blob).hexdigest(), expected_size=len(blob),
                    max_bytes=1 << 20)
    assert stat.S_IMODE((staging / "shared").lstat().st_mode) == 0o2775
    assert stat.S_IMODE((staging / "shared" / "a").lstat().st_mode) == 0o644


def test_deep_trees_are_refused_at_the_policy():
    policy = MemberPolicy(max_bytes=1 << 20)
    ok = tarfile.TarInfo("/".join(["a"] * MAX_DEPTH))
    ok.type = tarfile.DIRTYPE
    policy.admit(ok)
    deeper = tarfile.TarInfo("/".join(["a"] * (MAX_DEPTH + 1)))
    deeper.type = tarfile.DIRTYPE
    with pytest.raises(UnsafeArchive, match="nested more than"):
        policy.admit(deeper)


def test_remove_tree_handles_deep_trees(tmp_path):
    deep = tmp_path / "deep"
    p = str(deep)
    os.mkdir(p)
    for _ in range(1100):  # one level at a time (pathlib's mkdir(parents=True) recurses too)
        p += "/a"
        os.mkdir(p)
    try:
        remove_tree(deep)
        assert not deep.exists()
    finally:
        subprocess.run(["rm", "-rf", "--", str(deep)], check=True)
