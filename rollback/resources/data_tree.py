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
import threading
import time
from pathlib import Path

from ..archive import CODECS, create_archive, extract_archive, remove_tree
from ..archive.tree_check import check_tree
from .. import logbook
from ..errors import RollbackError, StepFailed, UnsafeArchive
from ..fsutil import exchange_paths, fsync_dir
from ..progress import NO_PROGRESS, Progress
from ..settings import Settings
from . import ResumableStep

STANDBY_TREE_NAME = ".rollback-standby"
RESERVED_PREFIXES = (".pre-", ".rollback-stage-", STANDBY_TREE_NAME)
# zstd level of the data archive: on the 1 GB bench tree, concurrently with pg_dump, level 1 took 3.1 s
# and level 3 3.2 s for archives within 1 % of each other in size (docs/performance.md).
SNAPSHOT_ZSTD_LEVEL = 1


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
    """Check DATA_BASE_DIR as a restore would check its archive (rollback.archive.tree_check: find and
    the member policy, no content read), so that an unrestorable tree is refused now, not at restore
    time; then archive it into `folder`. Returns the artifact record. The archive itself is scanned
    after the snapshot (rollback.tree_index), which catches an entry created in between."""
    data_file = folder / f"data{CODECS[settings.backup_codec]}"
    try:
        entries = check_tree(settings.data_base_dir, timeout=settings.command_timeout_sec)
    except UnsafeArchive as exc:
        raise RollbackError(f"DATA_BASE_DIR holds an entry a restore would refuse ({exc}); "
                            f"remove or replace it (absolute or outside symlinks, devices and FIFOs are not "
                            f"supported)") from None
    progress(0, 1, f"archiving {entries} entries of {settings.data_base_dir}")
    info = create_archive(settings.data_base_dir, data_file, codec=settings.backup_codec,
                          gzip_level=settings.gzip_level, zstd_level=SNAPSHOT_ZSTD_LEVEL,
                          progress=lambda n: progress(0, 1, f"tar: {n >> 20} MiB read"),
                          timeout=settings.command_timeout_sec)
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


class PreStaging:
    """The data archive extracted into the data step's staging folder, in a thread, while the db step
    restores the database (index builds: CPU; extraction: disk). Only this step's thread writes the
    journal: once both are done it marks `data_phase=extracted`, and the data step then only swaps.
    A kill before that mark leaves an unmarked staging folder, which the data step replaces."""

    def __init__(self, ctx: ResumableStep, staging: Path):
        self.ctx, self.staging = ctx, staging
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="data-prestaging", daemon=True)

    @classmethod
    def start(cls, ctx: ResumableStep) -> "PreStaging | None":
        marks = ctx.marks()
        if marks.get("data_phase") is not None or standby_tree_usable(ctx, marks):
            return None
        mounted = marks.get("data_mounted", is_mount(ctx.settings.data_base_dir))
        ctx.mark("data_mounted", mounted)  # the data step uses the same layout
        staging, _pre = layout(ctx.settings.data_base_dir, ctx.txn, mounted)
        self = cls(ctx, staging)
        self.thread.start()
        return self

    def _check(self, *_report) -> None:
        if self.cancel.is_set():
            raise StepFailed("data", "extraction stopped: the db step failed")

    def _run(self) -> None:
        try:
            stage(self.ctx.artifact_path("data"), self.ctx.snapshot["artifacts"]["data"], self.staging,
                            Progress(self._check))
        except BaseException as exc:  # reported by finish() in the step's thread
            self.error = exc
        self.seconds = time.monotonic() - self.started

    def abandon(self) -> None:
        """The db step failed: stop the extraction and remove what it wrote."""
        self.cancel.set()
        self.thread.join()
        remove_tree(self.staging)

    def finish(self) -> str:
        self.ctx.progress(3, 3, "waiting for the data archive's extraction into staging")
        self.thread.join()
        if self.error is not None:
            # Nothing live was touched: the data step extracts again and fails (or not) on its own terms.
            logbook.rollback_event(self.ctx.settings.rollback_log, self.ctx.txn, "data", "prestage_failed",
                                   error=str(self.error) or type(self.error).__name__)
            remove_tree(self.staging)
            return "; the data archive's extraction during this step failed (the data step extracts it again)"
        self.ctx.mark("data_prestaged", True)
        self.ctx.mark("data_phase", "extracted")
        return f"; data archive extracted into staging meanwhile ({self.seconds:.1f} s)"


def standby_tree_usable(ctx: ResumableStep, marks: dict) -> bool:
    """What `_take_standby_tree` will decide: the standby's tree serves the data step (no extraction)."""
    record = marks.get("standby")
    mounted = marks.get("data_mounted", is_mount(ctx.settings.data_base_dir))
    return bool(record) and record.get("mounted") == mounted and Path(record["tree"]).is_dir()


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
