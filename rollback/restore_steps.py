"""The five steps of a restore, in order: what each one is given and which resource it moves.

`preflight` verifies everything before anything changes and decides whether the warm standby is
used; `db`, `data` and `code` each bring one resource back (rollback.resources), taking the standby's
copy where the preflight found it usable; `readyz` restarts the app on the restored code, then waits
until it is ready. Each step records in the journal's marks how far it got, so a re-run resumes or
undoes. The transaction around them (journal, lock, skip/resume) is `restore.py`'s.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import discarded, logbook, migrations_info, remote, standby, tree_index
from .errors import IntegrityError, PreflightFailed, RollbackError, StepFailed
from .http_probe import wait_until_ready
from .journal import Journal
from .fsutil import sha256_file
from .progress import NO_PROGRESS, Progress
from .resources import app_process, code, data_tree, database
from .settings import Settings

NOT_RESTARTED_NOTE = ("the app process was not restarted (APP_RESTART_COMMAND is not set): "
                      "it may still run the replaced code")
WARM_ARTIFACTS_NOTE = "artifacts not read (standby sealed, tree unchanged); their SHA-256 is checked after the restore"
RENDER_NOTE = ("the app was restarted by Render's rollback deploy (CODE_ROLLBACK_STRATEGY=render); "
               "APP_RESTART_COMMAND is not run")


@dataclass
class StepContext:
    """What a step is given: settings, its transaction, the snapshot, the journal and its progress
    (already scoped to the step)."""

    settings: Settings
    txn: str
    step: str
    snapshot: dict
    journal: Journal
    progress: Progress = NO_PROGRESS

    @property
    def snapshot_dir(self) -> Path:
        return self.settings.backup_dir / self.snapshot["id"]

    def artifact_path(self, name: str) -> Path:
        return self.snapshot_dir / self.snapshot["artifacts"][name]["file"]

    def marks(self) -> dict:
        return self.journal.load(self.txn)["marks"]

    def mark(self, key: str, value) -> None:
        """Record durably how far this step got, so a re-run can resume or undo."""
        self.journal.mark(self.txn, key, value)


# -- preflight --------------------------------------------------------------------------------------
def preflight(ctx: StepContext) -> str:
    """Every check that can fail before anything is changed.

    A cold restore reads the artifacts, so they are all hashed here first. A standby-backed one does
    not: the standby's seal and fingerprint are its check, and the artifacts are verified in the
    background after the restore (verify.verify_after_standby_restore), so their size never delays it."""
    settings, snap = ctx.settings, ctx.snapshot
    # BACKUP_DIR lost or pruned: with BACKUP_REMOTE_URL the artifacts come back from the bucket first.
    fetched = remote.fetch_if_missing(settings, snap, ctx.progress.fraction(0, 0.5))
    cold, standby_note = _choose_standby(ctx)
    if cold:
        checks = remote.verify_or_fetch(settings, snap, ctx.progress.fraction(0, 0.5))
        _refuse_an_archive_the_index_refused(settings, snap)
    else:
        checks = [WARM_ARTIFACTS_NOTE]
    checks = [fetched] + checks if fetched else checks
    ctx.mark("artifacts_verified", cold)
    wanted = snap.get("alembic_revision")
    if not migrations_info.is_known_revision(settings, wanted):
        raise PreflightFailed(f"the snapshot's Alembic revision {wanted} is unknown to the deployed code "
                              f"({settings.alembic_config}); refusing to restore a schema it cannot manage")
    code_line = "code revision available"
    if snap.get("app_revision"):
        code_line = code.strategy_for(settings).check_available(snap["app_revision"]) or code_line
    if cold:
        _check_room(settings, snap)  # the standby tree is already on disk: nothing more to stage
    ctx.progress(1, 1, "preflight passed")
    return "; ".join(checks + ["alembic revision known", code_line, "disk space ok", standby_note])


def _choose_standby(ctx: StepContext) -> tuple[bool, str]:
    """Record in the journal whether the warm standby of this snapshot can be used;
    return (cold path, a line for the preflight detail)."""
    record, why = standby.usable_standby(ctx.settings, ctx.snapshot)
    ctx.mark("standby", record)
    if record:
        return False, f"warm standby of {record['snapshot_id']} will be used"
    return True, f"cold restore ({why})"


def _refuse_an_archive_the_index_refused(settings: Settings, snap: dict) -> None:
    """The index that follows a snapshot applies the member policy to its archive; an entry created while
    the snapshot ran may have been refused there. The extraction would refuse it too, but only after the
    db step: say so now, while nothing has changed."""
    folder = settings.backup_dir / snap["id"]
    summary = tree_index.recorded_summary(folder, snap)
    if summary and "unsafe" in summary:
        raise PreflightFailed(f"snapshot {snap['id']}: its data archive holds a member a restore refuses "
                              f"({summary['unsafe']}; see {folder / tree_index.DATA_SUMMARY}); restore an "
                              f"older snapshot")


def _check_room(settings: Settings, snap: dict) -> None:
    data_dir = settings.data_base_dir
    probe = data_dir if data_dir.exists() else data_dir.parent
    if not probe.exists():
        raise PreflightFailed(f"DATA_BASE_DIR {data_dir} and its parent do not exist")
    needed = snap["artifacts"]["data"].get("tar_bytes") or snap["artifacts"]["data"]["size"]
    free = shutil.disk_usage(probe).free
    # Staging holds a full copy beside the live tree until the swap; keep 10 % headroom.
    if free < needed * 1.1 + (16 << 20):
        raise PreflightFailed(f"not enough room on {probe}: {free >> 20} MiB free, "
                              f"{int(needed * 1.1) >> 20} MiB needed to stage the data directory")


# -- db ---------------------------------------------------------------------------------------------
def restore_db(ctx: StepContext) -> str:
    """Dispatch on DB_RESTORE_STRATEGY (the journal pins the choice for re-runs). A cold data step's
    extraction into its staging folder runs meanwhile (data_tree.PreStaging): it changes nothing live, and the
    renames still happen in order, db here, data in the next step."""
    strategy = ctx.marks().get("db_strategy") or ctx.settings.db_restore_strategy
    ctx.mark("db_strategy", strategy)
    staging = data_tree.PreStaging.start(ctx)
    try:
        if strategy == "swap":
            detail = _restore_db_swap(ctx)
        else:
            _check_dump_before_reading(ctx)  # in-place reads the dump even when the standby serves the data step
            detail = database.restore_in_place(ctx)
    except BaseException:
        if staging is not None:
            staging.abandon()
        raise
    discarded.mark_restored(ctx)  # rows written into the restored database from here on are the app's, not discarded
    return detail + (staging.finish() if staging is not None else "")


def _check_dump_before_reading(ctx: StepContext) -> None:
    """A warm preflight does not hash the dump; a db step that reads it after all (the standby database
    could not be taken, or the in-place strategy) checks it first, before anything is changed."""
    if ctx.marks().get("artifacts_verified"):
        return
    record = ctx.snapshot["artifacts"]["db"]
    ctx.progress(0, 3, f"checking the SHA-256 of {record['file']} (the preflight used the standby)")
    digest, size = sha256_file(ctx.artifact_path("db"))
    if (digest, size) != (record["sha256"], record["size"]):
        raise IntegrityError(f"{record['file']} does not match its recorded SHA-256 and size; nothing was changed "
                             f"(python -m manage.rollback verify {ctx.snapshot['id']})")


def _restore_db_swap(ctx: StepContext) -> str:
    """Restore into `<db>__new_<txn>` (or take the warm standby under that name) while the live
    database keeps serving, then rename live -> `<db>__pre_<txn>` and new -> live. The live database
    is never modified: until the renames it is untouched, after them it is the kept previous state."""
    settings, live = ctx.settings, ctx.settings.database.dbname
    pre, new = database.pre_database_name(live, ctx.txn), database.new_database_name(live, ctx.txn)
    phase = ctx.marks().get("db_phase")
    if phase is None and _take_standby_database(ctx, new):
        ctx.mark("db_phase", phase := "restored_new")
    if phase is None:
        ctx.progress(0, 3, f"pg_restore -j{settings.restore_jobs} into {new}")
        try:
            _check_dump_before_reading(ctx)
            database.restore_into_new(settings, ctx.artifact_path("db"), new, ctx.snapshot.get("alembic_revision"))
        except (RollbackError, OSError) as exc:
            _drop_quietly(ctx, new)
            raise StepFailed("db", f"{exc}; the live database was not touched") from None
        ctx.mark("db_phase", phase := "restored_new")
    if phase == "restored_new":
        ctx.progress(2, 3, f"swapping: {live} -> {pre}, {new} -> {live}")
        database.swap_databases(settings, live, new, pre)
        ctx.mark("db_pre_copy", pre)
        ctx.mark("db_phase", "swapped")
    ctx.progress(3, 3, f"database restored (swap); previous state kept as {pre}")
    how = "warm standby + rename" if ctx.marks().get("db_source") == "standby" else \
        f"pg_restore -j{settings.restore_jobs} + rename"
    return f"swap ({how}); previous state kept as database {pre}"


def _take_standby_database(ctx: StepContext, new: str) -> bool:
    """Rename the warm standby database (verified at preflight) to `new`; False to restore cold."""
    record = ctx.marks().get("standby")
    if not record:
        return False
    try:
        database.adopt_database(ctx.settings, record["database"], new)
    except RollbackError as exc:
        logbook.rollback_event(ctx.settings.rollback_log, ctx.txn, "db", "standby_skipped", error=str(exc))
        ctx.journal.add_note(ctx.txn, f"the warm standby database could not be used ({exc}); restored cold")
        return False
    standby.forget(ctx.settings)
    ctx.mark("db_source", "standby")
    ctx.progress(2, 3, f"took the warm standby database of snapshot {record['snapshot_id']}")
    return True


def _drop_quietly(ctx: StepContext, name: str) -> None:
    try:
        database.drop_database(ctx.settings, name)
    except RollbackError as exc:
        logbook.rollback_event(ctx.settings.rollback_log, ctx.txn, "db", "cleanup_failed", database=name,
                               error=str(exc))


# -- data -------------------------------------------------------------------------------------------
def restore_data(ctx: StepContext) -> str:
    """Stage the snapshot's tree (the warm standby's, or extracted), then put it in place of the live
    one; phases `extracted` → (`parked` on a mount point) → `swapped` are marked for re-runs."""
    data_dir = ctx.settings.data_base_dir
    marks = ctx.marks()
    mounted = marks.get("data_mounted", data_tree.is_mount(data_dir))
    ctx.mark("data_mounted", mounted)
    staging, pre = data_tree.layout(data_dir, ctx.txn, mounted)
    phase = marks.get("data_phase")

    if phase is None:
        if not _take_standby_tree(ctx, staging, mounted):
            data_tree.stage(ctx.artifact_path("data"), ctx.snapshot["artifacts"]["data"], staging,
                            ctx.progress.fraction(0, 2 / 3))
        ctx.mark("data_phase", phase := "extracted")
    if mounted:
        if phase == "extracted":
            ctx.progress(2, 3, f"parking the live files in {pre}")
            data_tree.park_live_children(data_dir, pre)
            ctx.mark("data_phase", phase := "parked")
        if phase == "parked":
            ctx.progress(2, 3, "moving the restored files in")
            data_tree.move_staged_children_in(staging, data_dir)
    elif phase == "extracted":
        ctx.progress(2, 3, f"swapping: live tree kept as {pre}")
        data_tree.exchange_with_live(ctx, data_dir, staging, pre)
    ctx.mark("data_phase", "swapped")
    ctx.progress(3, 3, "data directory restored")
    marks = ctx.marks()
    source = ("from the warm standby" if marks.get("data_source") == "standby" else
              "extracted during the db step" if marks.get("data_prestaged") else "extracted")
    kept = f"previous tree kept as {pre}" if pre.exists() else "there was no previous tree"
    return f"restored ({source}); {kept}"


def _take_standby_tree(ctx: StepContext, staging: Path, mounted: bool) -> bool:
    """Use the warm standby's tree (verified at preflight) as the staging folder: a rename."""
    record = ctx.marks().get("standby")
    if not record or record.get("mounted") != mounted or not Path(record["tree"]).is_dir():
        return False
    data_tree.take_standby_tree(Path(record["tree"]), staging)
    ctx.mark("data_source", "standby")
    ctx.progress(1, 3, f"took the warm standby tree of snapshot {record['snapshot_id']}")
    return True


# -- code -------------------------------------------------------------------------------------------
def restore_code(ctx: StepContext) -> str:
    revision = ctx.snapshot.get("app_revision")
    if not revision:
        return "the snapshot recorded no code revision; code left as it is"
    ctx.progress(0, 2, f"code back to {revision[:12]}")
    detail = code.strategy_for(ctx.settings).restore(ctx, revision)
    ctx.progress(2, 2, detail)
    return detail


# -- readyz -----------------------------------------------------------------------------------------
def wait_ready(ctx: StepContext) -> str:
    """Restart the app on the restored code (until then its processes may still run the replaced
    code), then poll READYZ_URL until it answers 200."""
    restarted = restart_app(ctx)
    settings = ctx.settings
    ready = wait_until_ready(settings.readyz_url, settings.ready_timeout_sec, settings.ready_interval_sec,
                             ctx.progress)
    return f"{restarted}; {ready}" if restarted else ready


def restart_app(ctx: StepContext) -> str:
    """Restart the app's processes (APP_RESTART_COMMAND; a failure fails the step, with db, data and
    code left restored; with CODE_ROLLBACK_STRATEGY=render the rollback deploy already restarted the
    service); return a line for the step detail."""
    settings = ctx.settings
    if settings.code_rollback_strategy == "render":
        ctx.journal.add_note(ctx.txn, RENDER_NOTE)
        return "restarted by the Render rollback deploy"
    if not settings.app_restart_command:
        ctx.journal.add_note(ctx.txn, NOT_RESTARTED_NOTE)
        return ""
    ctx.progress(0, 1, "restarting the app (APP_RESTART_COMMAND)")
    result = app_process.restart_app(settings, ctx.txn)
    ctx.mark("restart", result.record())
    logbook.rollback_event(settings.rollback_log, ctx.txn, "restart", "ok" if result.ok else "failed",
                           exit="timeout" if result.timed_out else result.exit,
                           duration_sec=f"{result.duration_sec:.1f}", command=result.command,
                           error=result.start_error, output=result.output_tail[-500:] or None)
    if not result.ok:
        raise RollbackError(f"the app restart command failed ({result.describe()}); database, data and code "
                            f"ARE restored — restart the app by hand, then check READYZ_URL ({settings.readyz_url})")
    ctx.journal.add_note(ctx.txn, f"the app was restarted by APP_RESTART_COMMAND (exit 0 in {result.duration_sec:.1f} s)")
    return f"app restarted in {result.duration_sec:.1f} s"


STEP_FUNCTIONS: dict[str, Callable[[StepContext], str]] = {
    "preflight": preflight,
    "db": restore_db,
    "data": restore_data,
    "code": restore_code,
    "readyz": wait_ready,
}
