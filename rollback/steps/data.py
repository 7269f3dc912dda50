"""Data directory: verified extraction into a staging folder, then a swap that keeps the old tree.

Normal case: the staging folder (a sibling, same filesystem) and DATA_BASE_DIR exchange names in one
atomic renameat2(RENAME_EXCHANGE), so a crash leaves either tree under the live name, never none;
the old tree, now under the staging name, is then renamed to `<DATA_BASE_DIR>.pre-<txn>`. Where the
filesystem cannot exchange, two plain renames are used (live -> pre, staging -> live). When
DATA_BASE_DIR is a mount point (Render's disk), the folder itself cannot move: its children are parked in `DATA_BASE_DIR/.pre-<txn>` and the
staged children moved in. Every phase is marked in the journal so an interrupted swap resumes.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..archive import extract_archive, remove_tree
from ..errors import RollbackError
from ..fsutil import exchange_paths, fsync_dir
from .context import StepContext

RESERVED_PREFIXES = (".pre-", ".rollback-stage-", ".rollback-standby")


def layout(data_dir: Path, txn: str, mounted: bool) -> tuple[Path, Path]:
    """(staging, pre) paths for this transaction."""
    if mounted:
        return data_dir / f".rollback-stage-{txn}", data_dir / f".pre-{txn}"
    return data_dir.parent / f".{data_dir.name}.rollback-stage-{txn}", data_dir.parent / f"{data_dir.name}.pre-{txn}"


def is_mount(data_dir: Path) -> bool:
    return data_dir.is_dir() and os.path.ismount(data_dir)


def restore_data(ctx: StepContext, mounted: bool | None = None) -> str:
    data_dir = ctx.settings.data_base_dir
    marks = ctx.marks()
    if mounted is None:
        mounted = marks.get("data_mounted", is_mount(data_dir))
    ctx.mark("data_mounted", mounted)
    staging, pre = layout(data_dir, ctx.txn, mounted)
    phase = marks.get("data_phase")

    if phase is None:
        if not _take_standby_tree(ctx, staging, mounted):
            _extract(ctx, staging)
        ctx.mark("data_phase", phase := "extracted")
    if mounted:
        if phase == "extracted":
            ctx.progress(2, 3, f"parking the live files in {pre}")
            _move_children(data_dir, pre, skip_reserved=True)
            ctx.mark("data_phase", phase := "parked")
        if phase == "parked":
            ctx.progress(2, 3, "moving the restored files in")
            _move_children(staging, data_dir, skip_reserved=False)
            staging.rmdir()
            fsync_dir(data_dir)
    elif phase == "extracted":
        ctx.progress(2, 3, f"swapping: live tree kept as {pre}")
        _swap_folders(ctx, data_dir, staging, pre)
    ctx.mark("data_phase", "swapped")
    ctx.progress(3, 3, "data directory restored")
    source = "from the warm standby" if ctx.marks().get("data_source") == "standby" else "extracted"
    kept = f"previous tree kept as {pre}" if pre.exists() else "there was no previous tree"
    return f"restored ({source}); {kept}"


def _take_standby_tree(ctx: StepContext, staging: Path, mounted: bool) -> bool:
    """Use the warm standby's tree (verified at preflight) as the staging folder: a rename."""
    standby = ctx.marks().get("standby")
    if not standby or standby.get("mounted") != mounted or not Path(standby["tree"]).is_dir():
        return False
    if staging.exists():
        remove_tree(staging)
    os.rename(standby["tree"], staging)
    fsync_dir(staging.parent)
    ctx.mark("data_source", "standby")
    ctx.progress(1, 3, f"took the warm standby tree of snapshot {standby['snapshot_id']}")
    return True


def _extract(ctx: StepContext, staging: Path) -> None:
    art = ctx.snapshot["artifacts"]["data"]
    if staging.exists():
        remove_tree(staging)  # an unfinished extraction from an interrupted run
    staging.parent.mkdir(parents=True, exist_ok=True)
    total = max(art.get("tar_bytes", art["size"]), 1)

    def report(done: int) -> None:
        ctx.progress(min(done, total) * 2 // total if total else 0, 3, f"extracting {done >> 20} / {total >> 20} MiB")

    ctx.progress(0, 3, f"extracting {art['file']} into {staging}")
    extract_archive(ctx.artifact_path("data"), staging, expected_sha256=art["sha256"], expected_size=art["size"],
                    max_bytes=art.get("tar_bytes", 0) or art["size"] * 1000, progress=report)


def _swap_folders(ctx: StepContext, live: Path, staging: Path, pre: Path) -> None:
    """Put staging in place of live, keeping live as pre; resumable at every point.

    The staging tree's inode is recorded before the exchange, so a re-run can tell whether the
    exchange happened (live is then that inode, and the staging name holds the old tree)."""
    parent = live.parent
    if not live.exists():
        if staging.exists():  # nothing to keep (first restore), or killed between two plain renames
            os.rename(staging, live)
            fsync_dir(parent)
        return
    staged_ino = ctx.marks().get("data_staged_ino")
    if staged_ino is None or (staging.exists() and staging.stat().st_ino == staged_ino):
        if not staging.exists():
            if pre.exists():
                return  # both plain renames happened (journal of a run without the exchange)
            raise RollbackError(f"cannot swap: {staging} is missing")
        if pre.exists():
            raise RollbackError(f"cannot swap: {pre} exists already; nothing was renamed")
        ctx.mark("data_staged_ino", staged_ino := staging.stat().st_ino)
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


def _move_children(source: Path, dest: Path, skip_reserved: bool) -> None:
    dest.mkdir(mode=0o700, exist_ok=True)
    for child in sorted(os.listdir(source)):
        if skip_reserved and child.startswith(RESERVED_PREFIXES):
            continue
        os.rename(source / child, dest / child)
    fsync_dir(source)
    fsync_dir(dest)
