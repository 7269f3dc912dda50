"""Database: dump for a snapshot; downgrade + restore for a restore, atomic through a pre-copy.

Restore order inside the step:
1. copy the live database to `<db>__pre_<txn>` (CREATE DATABASE ... TEMPLATE): the previous state,
   kept recoverable and used to undo this step if anything below fails;
2. `alembic downgrade <snapshot revision>` with the code still deployed;
3. `pg_restore --clean --if-exists --single-transaction` of the verified dump;
4. check nothing created after the snapshot survived; if something did, or the downgrade was
   impossible, fall back to a clean slate (empty database from template0 + pg_restore), loudly: a
   `fallback` log line and a journal warning (the restore ends `succeeded_with_warnings`).
The downgrade runs through ALEMBIC_COMMAND when set (the app's own environment, e.g. `flask db`).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

from psycopg import sql

from .. import logbook, migrations_info, pg
from ..errors import CommandFailed, RollbackError, StepFailed, StepInterrupted
from ..fsutil import HashingWriter
from ..proc import child_env, run
from .context import StepContext

DUMP_FILE = "db.dump"
CHUNK = 1 << 20


# -- snapshot ---------------------------------------------------------------------------------
def dump_database(settings, dest: Path, progress=None) -> dict:
    """pg_dump -Fc into dest, hashing while writing; returns the artifact record."""
    # --compress=1: measured 2.5x faster than the default level for a 10 % larger dump.
    argv = ["pg_dump", "--format=custom", "--compress=1", "--no-password"]
    env = child_env(settings.database.libpq_env())
    with tempfile.TemporaryFile() as errf, open(dest, "wb") as out:
        writer = HashingWriter(out)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errf, env=env)
        try:
            while chunk := proc.stdout.read(CHUNK):
                writer.write(chunk)
                if progress:
                    progress(writer.size)
            rc = proc.wait(timeout=settings.command_timeout_sec)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if rc != 0:
            errf.seek(0)
            raise CommandFailed(argv, rc, errf.read().decode("utf-8", "replace"))
        writer.flush()
        import os

        os.fsync(out.fileno())
    dest.chmod(0o600)
    return {"file": dest.name, "sha256": writer.sha256, "size": writer.size, "format": "pg_dump-custom"}


def list_dump(dump: Path, timeout: float) -> str:
    """`pg_restore --list`: proves the dump is readable and returns its table of contents."""
    return run(["pg_restore", "--list", str(dump)], timeout=timeout).stdout.decode("utf-8", "replace")


_TOC_LINE = re.compile(r"^\d+; \d+ \d+ (?P<kind>TABLE|SEQUENCE|VIEW|MATERIALIZED VIEW|INDEX|CONSTRAINT|FK CONSTRAINT) "
                       r"(?P<schema>\S+) (?P<rest>.+)$")


def dump_relations(toc: str) -> set[tuple[str, str]]:
    """(schema, name) of relations the dump creates (constraints name their backing indexes)."""
    found = set()
    for line in toc.splitlines():
        m = _TOC_LINE.match(line)
        if not m:
            continue
        words = m["rest"].split()
        # "TABLE public users owner", "CONSTRAINT public users users_pkey owner"
        name = words[1] if m["kind"] in ("CONSTRAINT", "FK CONSTRAINT") and len(words) > 2 else words[0]
        found.add((m["schema"], name))
    return found


# -- restore ----------------------------------------------------------------------------------
def _side_name(live: str, kind: str, txn: str) -> str:
    """`<db>__<kind>_<txn>`, cut to Postgres' 63-byte identifier limit."""
    suffix = f"__{kind}_" + txn.removeprefix("txn-").replace("-", "_").lower()
    return live[: 63 - len(suffix)] + suffix


def pre_database_name(live: str, txn: str) -> str:
    return _side_name(live, "pre", txn)


def new_database_name(live: str, txn: str) -> str:
    return _side_name(live, "new", txn)


def restore_db(ctx: StepContext) -> str:
    """Dispatch on DB_RESTORE_STRATEGY (the journal pins the choice for re-runs)."""
    strategy = ctx.marks().get("db_strategy") or ctx.settings.db_restore_strategy
    ctx.mark("db_strategy", strategy)
    return restore_db_swap(ctx) if strategy == "swap" else restore_db_in_place(ctx)


# -- swap: parallel pg_restore into a fresh database, then two renames ------------------------
def restore_db_swap(ctx: StepContext) -> str:
    """Restore into `<db>__new_<txn>` with `pg_restore -j` while the live database keeps serving,
    then rename live -> `<db>__pre_<txn>` and new -> live. The live database is never modified:
    until the renames it is untouched, after them it is the kept previous state."""
    settings, live = ctx.settings, ctx.settings.database.dbname
    pre, new = pre_database_name(live, ctx.txn), new_database_name(live, ctx.txn)
    wanted = ctx.snapshot.get("alembic_revision")
    phase = ctx.marks().get("db_phase")
    if phase is None and _take_standby_database(ctx, new):
        ctx.mark("db_phase", phase := "restored_new")
    if phase is None:
        ctx.progress(0, 3, f"pg_restore -j{settings.restore_jobs} into {new}")
        try:
            _restore_into_new(ctx, new, wanted)
        except (RollbackError, OSError) as exc:
            _drop_quietly(ctx, new)
            raise StepFailed("db", f"{exc}; the live database was not touched") from None
        ctx.mark("db_phase", phase := "restored_new")
    if phase == "restored_new":
        ctx.progress(2, 3, f"swapping: {live} -> {pre}, {new} -> {live}")
        _swap_databases(ctx, live, new, pre)
        ctx.mark("db_pre_copy", pre)
        ctx.mark("db_phase", "swapped")
    ctx.progress(3, 3, f"database restored (swap); previous state kept as {pre}")
    how = "warm standby + rename" if ctx.marks().get("db_source") == "standby" else \
        f"pg_restore -j{settings.restore_jobs} + rename"
    return f"swap ({how}); previous state kept as database {pre}"


def _take_standby_database(ctx: StepContext, new: str) -> bool:
    """Rename the warm standby database (verified at preflight) to `new`; False to restore cold."""
    from .. import standby

    record = ctx.marks().get("standby")
    if not record:
        return False
    try:
        standby.take_database(ctx.settings, record, new)
    except RollbackError as exc:
        logbook.rollback_event(ctx.settings.rollback_log, ctx.txn, "db", "standby_skipped", error=str(exc))
        ctx.journal.add_note(ctx.txn, f"the warm standby database could not be used ({exc}); restored cold")
        return False
    standby.forget(ctx.settings)
    ctx.mark("db_source", "standby")
    ctx.progress(2, 3, f"took the warm standby database of snapshot {record['snapshot_id']}")
    return True


def _restore_into_new(ctx: StepContext, new: str, wanted: str | None) -> None:
    target = ctx.settings.database
    with pg.connect_maintenance(target) as conn:
        pg.drop_database(conn, new)  # a half-restored one from an interrupted attempt
        pg.create_empty_database(conn, new, like=target.dbname)
        pg.copy_database_settings(conn, target.dbname, new)
    argv = ["pg_restore", "--exit-on-error", "--no-password", f"--jobs={ctx.settings.restore_jobs}",
            "--dbname", new, str(ctx.artifact_path("db"))]
    run(argv, env=target.libpq_env(), timeout=ctx.settings.command_timeout_sec)
    got = pg.alembic_revision(target, new)
    if got != wanted:
        raise RollbackError(f"the restored database is at {got or 'no revision'}, expected {wanted or 'none'}")


def _swap_databases(ctx: StepContext, live: str, new: str, pre: str) -> None:
    """live -> pre and new -> live in one transaction (pg.swap_database_names); resumable."""
    with pg.connect_maintenance(ctx.settings.database) as conn:
        try:
            if pg.database_exists(conn, new):
                if pg.database_exists(conn, live) and not pg.database_exists(conn, pre):
                    pg.swap_database_names(conn, live, new, pre)
                elif not pg.database_exists(conn, live):
                    pg.rename_database(conn, new, live)  # a journal written by a version with two renames
                else:
                    raise RollbackError(f"{live}, {new} and {pre} all exist; resolve by hand (nothing was renamed)")
            if not pg.database_exists(conn, live):
                raise RollbackError(f"neither {live} nor {new} exists")
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(live)))
        except RollbackError as exc:
            raise StepFailed("db", f"swap failed: {exc}; the live database was left as it was") from None


def _drop_quietly(ctx: StepContext, name: str) -> None:
    try:
        with pg.connect_maintenance(ctx.settings.database) as conn:
            pg.drop_database(conn, name)
    except RollbackError as exc:
        logbook.rollback_event(ctx.settings.rollback_log, ctx.txn, "db", "cleanup_failed", database=name,
                               error=str(exc))


# -- in-place: the runbook's alembic downgrade + pg_restore --clean -----------------------------
def restore_db_in_place(ctx: StepContext) -> str:
    settings, target = ctx.settings, ctx.settings.database
    dump = ctx.artifact_path("db")
    pre = pre_database_name(target.dbname, ctx.txn)
    ctx.progress(0, 4, "saving the current database as " + pre)
    _ensure_pre_copy(ctx, pre)

    wanted = ctx.snapshot.get("alembic_revision")
    method = "downgrade+restore"
    try:
        ctx.progress(1, 4, f"alembic downgrade to {wanted or 'base'} with the deployed code")
        reason = _downgrade(ctx, wanted)
        if reason is None:
            ctx.progress(2, 4, "pg_restore --clean of the snapshot dump")
            _pg_restore(settings, dump, clean=True)
            leftovers = pg.relation_inventory(target) - dump_relations(list_dump(dump, settings.command_timeout_sec))
            if leftovers:
                reason = "objects not in the snapshot survived: " + ", ".join(sorted(f"{s}.{n}" for s, n in leftovers)[:5])
        if reason is not None:
            method = "clean-slate"
            logbook.rollback_event(settings.rollback_log, ctx.txn, "db", "fallback", method="clean-slate", reason=reason)
            ctx.progress(2, 4, f"FALLBACK clean-slate restore ({reason})")
            _clean_slate_restore(ctx, dump)
        ctx.progress(3, 4, "checking the restored revision")
        got = pg.alembic_revision(target)
        if got != wanted:
            raise RollbackError(f"after restore the database is at {got or 'no revision'}, expected {wanted or 'none'}")
    except (RollbackError, OSError) as exc:
        _undo_from_pre_copy(ctx, pre)
        raise StepFailed("db", f"{exc}; the database was put back as it was before this step") from None
    if method == "clean-slate":  # recorded once the fallback worked: an undone attempt leaves no warning
        ctx.journal.add_warning(ctx.txn, f"database restored from a clean slate instead of alembic downgrade + "
                                         f"pg_restore --clean: {reason}")
    ctx.progress(4, 4, f"database restored ({method}); previous state kept as {pre}")
    return f"{method}; previous state kept as database {pre}"


def _ensure_pre_copy(ctx: StepContext, pre: str) -> None:
    """First run: copy live to pre. Re-run after an interruption: reset live from the pre copy."""
    live = ctx.settings.database.dbname
    with pg.connect_maintenance(ctx.settings.database) as conn:
        if ctx.marks().get("db_pre_copy") == pre and pg.database_exists(conn, pre):
            pg.drop_database(conn, live)
            pg.copy_database(conn, pre, live)
            return
        pg.drop_database(conn, pre)  # an unfinished copy from a killed attempt
        pg.copy_database(conn, live, pre)
    ctx.mark("db_pre_copy", pre)


UNDO_RETRY_SEC = 60.0  # how long the undo waits for an unreachable server (a restart takes seconds)


def _undo_from_pre_copy(ctx: StepContext, pre: str) -> None:
    live = ctx.settings.database.dbname
    deadline = time.monotonic() + UNDO_RETRY_SEC
    while True:
        try:
            with pg.connect_maintenance(ctx.settings.database) as conn:
                pg.drop_database(conn, live)
                pg.copy_database(conn, pre, live)
            return
        except RollbackError as exc:
            if time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            logbook.rollback_event(ctx.settings.rollback_log, ctx.txn, "db", "undo_failed", error=str(exc), pre=pre)
            raise StepInterrupted("db", f"the step failed and putting back {pre} failed too ({exc}); the "
                                        f"restore stays open: once the database server is back, run "
                                        f"`python -m manage.rollback resume {ctx.txn}` (it starts from {pre})") from None


def _downgrade(ctx: StepContext, wanted: str | None) -> str | None:
    """Run the downgrade; return None on success or why a clean slate is needed instead."""
    current = pg.alembic_revision(ctx.settings.database)
    ctx.mark("db_revision_before", current)
    if current == wanted:
        ctx.mark("db_revision_after_downgrade", current)
        return None
    if not migrations_info.is_known_revision(ctx.settings, current):
        return f"the database revision {current} is unknown to the deployed code"
    try:
        command = migrations_info.downgrade(ctx.settings, wanted, timeout=ctx.settings.command_timeout_sec)
    except RollbackError as exc:
        return f"alembic downgrade failed: {exc}{_alembic_command_hint(ctx)}"
    ctx.mark("db_downgrade_command", command)
    after = pg.alembic_revision(ctx.settings.database)
    ctx.mark("db_revision_after_downgrade", after)
    if after != wanted:
        return f"alembic downgrade ended at {after}, not {wanted}{_alembic_command_hint(ctx)}"
    return None


def _alembic_command_hint(ctx: StepContext) -> str:
    if ctx.settings.alembic_command:
        return ""
    return ("; set ALEMBIC_COMMAND to run the downgrade in the app's own environment "
            "(e.g. ALEMBIC_COMMAND='/srv/app/.venv/bin/flask --app app db' for Flask-Migrate)")


def _pg_restore(settings, dump: Path, clean: bool, dbname: str | None = None) -> None:
    argv = ["pg_restore", "--single-transaction", "--exit-on-error", "--no-password",
            "--dbname", dbname or settings.database.dbname]
    if clean:
        argv += ["--clean", "--if-exists"]
    run(argv + [str(dump)], env=settings.database.libpq_env(), timeout=settings.command_timeout_sec)


def _clean_slate_restore(ctx: StepContext, dump: Path) -> None:
    """Replace the live database with an empty one from template0 and restore the dump into it."""
    live = ctx.settings.database.dbname
    pre = pre_database_name(live, ctx.txn)
    with pg.connect_maintenance(ctx.settings.database) as conn:
        pg.drop_database(conn, live)
        pg.create_empty_database(conn, live, like=pre)
    _pg_restore(ctx.settings, dump, clean=False)
