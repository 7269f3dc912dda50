"""The data tree's checks around a snapshot: the live tree checked by find + the member policy before it is
archived (archive.tree_check), and the archive read back after it (tree_index): listing, summary, and the
member policy again for an entry created in between. Real GNU find, tar, zstd, Postgres, git."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from rollback import restore as core
from rollback import tree_index
from rollback.archive import DEFAULT_EXCLUDES, create_archive, scan_archive
from rollback.archive.tree_check import check_tree
from rollback.errors import RollbackError, StepFailed, UnsafeArchive
from rollback.manifest import Manifest
from rollback.resources import data_tree
from rollback.snapshot import create_snapshot
from rollback.verify import index_after_snapshot
from tests import state


def _fifo(root: Path) -> None:
    os.mkfifo(root / "pipe")


def _socket(root: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "app.sock"))
    sock.close()


def _setuid(root: Path) -> None:
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "tool", 0o4755)


def _setgid_file(root: Path) -> None:
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "tool", 0o2755)


def _setgid_dir(root: Path) -> None:
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o2775)


def _hardlinks(root: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "one").write_text("same inode")
    os.link(root / "a" / "one", root / "two")
    os.link(root / "a" / "one", root / "a" / "three")


def _chained_escape(root: Path) -> None:
    # each link alone stays inside; followed through the other one, "b" leaves the tree
    (root / "d").mkdir()
    (root / "d" / "up").symlink_to("..")
    (root / "b").symlink_to("d/up/..")


def _deep(root: Path) -> None:
    path = root
    for _ in range(260):
        path = path / "d"
    path.mkdir(parents=True)


def _odd_names(root: Path) -> None:
    (root / "with space").write_text("x")
    (root / "new\nline").write_text("y")
    (root / "-name").write_text("z")
    (root / os.fsdecode(b"latin1-\xe9")).write_text("w")


def _excluded_top(root: Path) -> None:
    (root / ".pre-old").mkdir()
    os.mkfifo(root / ".pre-old" / "pipe")  # beside the live tree, never archived


def _nested_reserved_name(root: Path) -> None:
    (root / "sub" / ".pre-x").mkdir(parents=True)
    os.mkfifo(root / "sub" / ".pre-x" / "pipe")  # only top-level names are reserved


def _char_device(root: Path) -> None:
    os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))


TREES = {
    "fifo": _fifo,
    "socket": _socket,
    "absolute symlink": lambda r: (r / "etc").symlink_to("/etc/passwd"),
    "escaping symlink": lambda r: (r / "up").symlink_to("../outside"),
    "symlink escaping through another": _chained_escape,
    "dangling symlink inside": lambda r: (r / "later").symlink_to("not/yet/there"),
    "setuid file": _setuid,
    "setgid file": _setgid_file,
    "setgid folder": _setgid_dir,
    "hard links": _hardlinks,
    "nested 260 deep": _deep,
    "odd names": _odd_names,
    "reserved top-level name": _excluded_top,
    "reserved name nested": _nested_reserved_name,
    "character device": _char_device,
}


def _verdict(run) -> str:
    try:
        run()
    except UnsafeArchive as exc:
        return f"refused: {exc}"
    return "accepted"


@pytest.mark.parametrize("case", sorted(TREES))
def test_the_live_tree_check_agrees_with_the_archives_own_check(tmp_path, case):
    """Whatever the restore's scan of the archive says, the check of the live tree says first."""
    if case == "character device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    root = tmp_path / "tree"
    (root / "base").mkdir(parents=True)
    (root / "base" / "file.txt").write_text("content")
    TREES[case](root)
    archive = tmp_path / "a.tar.zst"
    create_archive(root, archive, codec="zstd")
    from_archive = _verdict(lambda: scan_archive(archive, max_bytes=1 << 40))
    from_tree = _verdict(lambda: check_tree(root, DEFAULT_EXCLUDES))
    assert from_tree == from_archive
    expected_refused = case in {"fifo", "absolute symlink", "escaping symlink", "symlink escaping through another",
                                "setuid file", "setgid file", "nested 260 deep", "reserved name nested",
                                "character device"}
    assert from_tree.startswith("refused") == expected_refused, from_tree


def test_the_live_tree_check_counts_every_entry_and_reports_a_tree_it_cannot_list(tmp_path):
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    assert check_tree(root) == 4  # ".", a, a/b, a/b/f
    with pytest.raises(RollbackError, match="cannot list .*missing"):
        check_tree(tmp_path / "missing")


def _archive_record(folder: Path, tree: Path) -> dict:
    info = create_archive(tree, folder / "data.tar.zst", codec="zstd")
    return {"file": info.file, "sha256": info.sha256, "size": info.size, "tar_bytes": info.tar_bytes}


def test_the_index_lists_every_member_with_its_content_hash_and_sums_the_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    blob = os.urandom((2 << 20) + 123)  # several chunks through the scan's queue
    (tree / "d" / "blob.bin").write_bytes(blob)
    (tree / "link").symlink_to("d/blob.bin")
    (tree / "d" / "twin").write_text("t")
    os.link(tree / "d" / "twin", tree / "twin-too")
    folder = tmp_path / "snap"
    folder.mkdir()
    summary = tree_index.index_archive(folder, _archive_record(folder, tree))
    assert summary == tree_index.tree_summary(tree)
    assert json.loads((folder / tree_index.DATA_SUMMARY).read_text()) == summary
    listing = folder / tree_index.DATA_LISTING
    assert stat.S_IMODE(listing.stat().st_mode) == 0o600
    lines = {rec["path"]: rec for rec in map(json.loads, listing.read_text().splitlines())}
    assert lines["d/blob.bin"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert lines["d/blob.bin"]["size"] == len(blob)
    assert lines["link"]["target"] == "d/blob.bin"
    assert lines["twin-too"]["sha256"] == hashlib.sha256(b"t").hexdigest()  # a hard link lists as its file
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


def test_the_index_refuses_bytes_that_differ_from_the_record_and_writes_nothing(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x" * 5000)
    folder = tmp_path / "snap"
    folder.mkdir()
    record = _archive_record(folder, tree)
    with open(folder / record["file"], "r+b") as f:
        f.seek(record["size"] - 8)  # the frame's checksum region: still decodes up to it
        f.write(b"\0" * 4)
    with pytest.raises(RollbackError):
        tree_index.index_archive(folder, record)
    assert sorted(p.name for p in folder.iterdir()) == ["data.tar.zst"]


def _snapshot_with_an_entry_created_while_it_ran(settings, monkeypatch) -> dict:
    """The race the live check cannot see: the entry appears after find passed, before tar reads."""
    real_check = data_tree.check_tree

    def check_then_create(*args, **kwargs):
        entries = real_check(*args, **kwargs)
        os.mkfifo(settings.data_base_dir / "uploads" / "appeared.pipe")
        return entries

    monkeypatch.setattr(data_tree, "check_tree", check_then_create)
    (settings.data_base_dir / "uploads").mkdir(exist_ok=True)
    return create_snapshot(settings, notes="raced")


def test_an_entry_created_during_the_snapshot_is_caught_by_the_index_and_refused_before_a_restore_changes_anything(
        settings, monkeypatch):
    snap = _snapshot_with_an_entry_created_while_it_ran(settings, monkeypatch)
    folder = settings.backup_dir / snap["id"]
    result = index_after_snapshot(settings, snap["id"])
    assert result["indexed"] and "appeared.pipe" in result["unsafe"] and "FIFO" in result["unsafe"], result
    assert not (folder / tree_index.DATA_LISTING).exists()
    assert "snapshot index refused" in settings.rollback_log.read_text()

    (settings.data_base_dir / "uploads" / "appeared.pipe").unlink()
    (settings.data_base_dir / "users.json").write_text("changed after the snapshot")
    state.bad_deploy(settings, settings.app_repo_dir)
    before = state.capture(settings)
    doc = core.begin_restore(settings, snap["id"], reason="bad deploy")
    with pytest.raises(StepFailed, match="holds a member a restore refuses"):
        core.run_step(settings, doc["txn"], "preflight", doc["attempt"])
    assert state.capture(settings) == before  # nothing was touched


def test_a_snapshot_not_indexed_yet_is_indexed_by_its_first_reader_and_an_older_entry_keeps_its_summary(settings):
    snap = create_snapshot(settings)
    folder = settings.backup_dir / snap["id"]
    assert "data" not in snap["stats"] and snap["stats"]["data_summary"] == tree_index.DATA_SUMMARY
    assert tree_index.recorded_summary(folder, snap) is None
    first = tree_index.summary_for(settings, snap)  # e.g. a drill, before the background task ran
    assert first == tree_index.tree_summary(settings.data_base_dir, skip_top=(".pre-", ".rollback-"))
    assert tree_index.recorded_summary(folder, snap) == first and (folder / tree_index.DATA_LISTING).is_file()

    # A snapshot of an older version carried its summary in the entry and may lack the listing.
    older = dict(snap, stats={"tables": snap["stats"]["tables"], "data": first, "data_listing": tree_index.DATA_LISTING})
    (folder / tree_index.DATA_SUMMARY).unlink()
    (folder / tree_index.DATA_LISTING).unlink()
    assert tree_index.ensure_index(settings, older) == first
    assert (folder / tree_index.DATA_LISTING).is_file()


def test_the_index_of_a_pruned_snapshot_is_a_logged_failure_not_a_crash(settings):
    snap = create_snapshot(settings)
    archive = settings.backup_dir / snap["id"] / snap["artifacts"]["data"]["file"]
    archive.unlink()
    result = index_after_snapshot(settings, snap["id"])
    assert result["indexed"] is False and "not in" in result["error"], result
    assert "snapshot index failed" in settings.rollback_log.read_text()
    assert Manifest(settings.backup_dir).entries()[-1]["id"] == snap["id"]  # the record is left to its owner
