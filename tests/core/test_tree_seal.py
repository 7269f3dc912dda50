"""The standby tree's seal: stable while nothing changes (also across a rename of the root), changed by
any edit a restore must not miss, including one that puts size and mtime back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rollback.errors import RollbackError
from rollback.tree_seal import MIN_UNITS, tree_digest


def _tree(root: Path, folders: int = 20) -> Path:
    for i in range(folders):
        sub = root / f"f{i:02d}" / "deep"
        sub.mkdir(parents=True)
        (root / f"f{i:02d}" / "a.txt").write_text(f"a{i}")
        (sub / "b.bin").write_bytes(bytes([i]) * 100)
    (root / "top.json").write_text("{}")
    os.symlink("top.json", root / "link")
    return root


def _edit_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


EDITS = {
    "content, same size and mtime": lambda r: _edit_keeping_size_and_mtime(r / "f03" / "deep" / "b.bin"),
    "new file deep down": lambda r: (r / "f07" / "deep" / "new").write_text(""),
    "file removed": lambda r: (r / "f11" / "a.txt").unlink(),
    "mode changed": lambda r: os.chmod(r / "f02" / "a.txt", 0o600),
    "symlink retargeted": lambda r: (os.unlink(r / "link"), os.symlink("f00/a.txt", r / "link")),
    "top-level file added": lambda r: (r / "zz").write_text("x"),
    "folder renamed": lambda r: os.rename(r / "f05", r / "f05x"),
}


@pytest.mark.parametrize("folders", [1, 3, MIN_UNITS * 2])
def test_seal_is_stable_and_ignores_the_roots_path(tmp_path, folders):
    root = _tree(tmp_path / "prep", folders)
    sealed = tree_digest(root)
    assert tree_digest(root) == sealed
    os.rename(root, tmp_path / "published")
    assert tree_digest(tmp_path / "published") == sealed


@pytest.mark.parametrize("edit", list(EDITS))
def test_any_edit_changes_the_seal(tmp_path, edit):
    root = _tree(tmp_path / "t")
    sealed = tree_digest(root)
    EDITS[edit](root)
    assert tree_digest(root) != sealed


def test_names_that_look_like_find_options_are_paths(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    for name in ("-delete", "(", "!", "-exec"):
        (root / name).write_text(name)
    sealed = tree_digest(root)
    assert sorted(p.name for p in root.iterdir()) == ["!", "(", "-delete", "-exec"]
    (root / "-delete").write_text("changed!")
    assert tree_digest(root) != sealed


def test_an_unreadable_tree_is_an_error_not_a_digest(tmp_path):
    with pytest.raises(RollbackError, match="cannot fingerprint"):
        tree_digest(tmp_path / "missing")
