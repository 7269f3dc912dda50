"""Data tree (DATA_BASE_DIR): its archive for a snapshot, and its restore by staging then exchanging.

Restore: the verified archive is extracted into a staging folder (a sibling, same filesystem), or the
warm standby's tree is renamed into that place; then staging and DATA_BASE_DIR exchange names in one
atomic renameat2(RENAME_EXCHANGE), so a crash leaves either tree under the live name, never none; the
old tree, now under the staging name, is renamed to `<DATA_BASE_DIR>.pre-<txn>`. Where the filesystem
cannot exchange, two plain renames are used (live -> pre, staging -> live). When DATA_BASE_DIR is a
mount point (Render's disk) the folder itself cannot move: its children are parked in
`DATA_BASE_DIR/.pre-<txn>` and the staged children moved in. The names used beside the live tree
(`RESERVED_PREFIXES`) are never archived as data nor moved with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..archive import CODECS, create_archive, extract_archive, remove_tree, scan_archive
from ..errors import RollbackError, UnsafeArchive
from ..fsutil import exchange_paths, fsync_dir
from ..progress import NO_PROGRESS, Progress
from ..settings import Settings
from . import ResumableStep

STANDBY_TREE_NAME = ".rollback-standby"
RESERVED_PREFIXES = (".pre-", ".rollback-stage-", STANDBY_TREE_NAME)


def layout(data_dir: Path, txn: str, mounted: bool) -> tuple[Path, Path]:
    """(staging, pre) paths for this transaction."""
    if mounted:
        return data_dir / f".rollback-stage-{txn}", data_dir / f".pre-{txn}"
    return data_dir.parent / f".{data_dir.name}.rollback-stage-{txn}", data_dir.parent / f"{data_dir.name}.pre-{txn}"


def standby_tree_path(data_dir: Path, mounted: bool) -> Path:
    """Where a warm standby tree waits: inside the data dir when it is a mount point (same
    filesystem), else beside it."""
    return data_dir / STANDBY_TREE_NAME if mounted else data_dir.parent / f".{data_dir.name}{STANDBY_TREE_NAME}"


def is_mount(data_dir: Path) -> bool:
    return data_dir.is_dir() and os.path.ismount(data_dir)


# -- snapshot -----------------------------------------------------------------------------------
def archive_for_snapshot(settings: Settings, folder: Path, progress: Progress = NO_PROGRESS) -> dict:
    """Archive DATA_BASE_DIR into `folder` and scan the archive as a restore would, so that an
    unrestorable snapshot is refused now, not at restore time; returns the artifact record."""
    data_file = folder / f"data{CODECS[settings.backup_codec]}"
    info = create_archive(settings.data_base_dir, data_file, codec=settings.backup_codec,
                          gzip_level=settings.gzip_level, progress=lambda n: progress(0, 1, f"tar: {n >> 20} MiB read"),
                          timeout=settings.command_timeout_sec)
    try:
        scan_archive(data_file, max_bytes=info.tar_bytes)
    except UnsafeArchive as exc:
        raise RollbackError(f"DATA_BASE_DIR holds an entry a restore would refuse ({exc}); "
                            f"remove or replace it (absolute or outside symlinks, devices and FIFOs are not "
                            f"supported)") from None
    return {"file": info.file, "sha256": info.sha256, "size": info.size, "tar_bytes": info.tar_bytes,
            "codec": info.codec}


# -- restore --------------------------------------------------------------------------------------
def stage(archive: Path, artifact: dict, staging: Path, progress: Progress = NO_PROGRESS) -> None:
    """Extract the archive (checked against its artifact record) into `staging`, replacing what an
    interrupted extraction left there."""
    if staging.exists():
        remove_tree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    total = max(artifact.get("tar_bytes", artifact["size"]), 1)
    progress(0, total, f"extracting {artifact['file']} into {staging}")
    extract_archive(archive, staging, expected_sha256=artifact["sha256"], expected_size=artifact["size"],
                    max_bytes=artifact.get("tar_bytes") or artifact["size"] * 1000,
                    progress=lambda done: progress.bytes(min(done, total), total, "extracting"))


def take_standby_tree(tree: Path, staging: Path) -> None:
    """Rename a prepared tree into the staging place (an earlier attempt's staging is replaced)."""
    if staging.exists():
        remove_tree(staging)
    os.rename(tree, staging)
    fsync_dir(staging.parent)


def exchange_with_live(step: ResumableStep, live: Path, staging: Path, pre: Path) -> None:
    """Put staging in place of live, keeping live as pre; resumable at every point.

    The staging tree's inode is recorded (mark `data_staged_ino`) before the exchange, so a re-run
    can tell whether the exchange happened (live is then that inode, and the staging name holds the
    old tree)."""
    parent = live.parent
    if not live.exists():
        if staging.exists():  # nothing to keep (first restore), or killed between two plain renames
            os.rename(staging, live)
            fsync_dir(parent)
        return
    staged_ino = step.marks().get("data_staged_ino")
    if staged_ino is None or (staging.exists() and staging.stat().st_ino == staged_ino):
        if not staging.exists():
            if pre.exists():
                return  # both plain renames happened (journal of a run without the exchange)
            raise RollbackError(f"cannot swap: {staging} is missing")
        if pre.exists():
            raise RollbackError(f"cannot swap: {pre} exists already; nothing was renamed")
        step.mark("data_staged_ino", staged_ino := staging.stat().st_ino)
        if not exchange_paths(staging, live):
            os.rename(live, pre)
            fsync_dir(parent)
            os.rename(staging, live)
            fsync_dir(parent)
            return
        fsync_dir(parent)
    if live.stat().st_ino != staged_ino:
        raise RollbackError(f"cannot swap: {live} is neither the old nor the restored tree")
    if staging.exists():  # after the exchange it holds the previous tree
        os.rename(staging, pre)
        fsync_dir(parent)


def park_live_children(data_dir: Path, pre: Path) -> None:
    """Mount point: move the live children (not the reserved names) into `pre`."""
    _move_children(data_dir, pre, skip_reserved=True)


def move_staged_children_in(staging: Path, data_dir: Path) -> None:
    """Mount point: move the staged children into the data dir, then drop the empty staging folder."""
    _move_children(staging, data_dir, skip_reserved=False)
    staging.rmdir()
    fsync_dir(data_dir)


def _move_children(source: Path, dest: Path, skip_reserved: bool) -> None:
    dest.mkdir(mode=0o700, exist_ok=True)
    for child in sorted(os.listdir(source)):
        if skip_reserved and child.startswith(RESERVED_PREFIXES):
            continue
        os.rename(source / child, dest / child)
    fsync_dir(source)
    fsync_dir(dest)
