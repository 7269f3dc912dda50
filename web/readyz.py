"""/readyz checks: required variables, the users file, the database and its tables, the Alembic head.

Every check runs in a worker thread and the endpoint waits at most `readyz_deadline_sec` for all
of them, so a hanging database turns into a failed check, never into a hanging probe. The database
checks also bound themselves (connect_timeout, statement_timeout) so a stuck thread ends soon.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable

import psycopg
from psycopg import sql

from rollback import migrations_info
from rollback.errors import RollbackError
from rollback.logbook import mask_secrets
from rollback.readiness import CheckFailed, check_json_file, check_required_env
from rollback.settings import Settings

from .config import WebConfig

log = logging.getLogger("web.readyz")

# libpq's minimum; the deadline below still answers sooner.
CONNECT_TIMEOUT_SEC = 2
STATEMENT_TIMEOUT_MS = 1000

# Shared and bounded: a flood of probes against a hung database cannot pile up threads.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")

Check = Callable[[], str]  # returns a detail on success, raises CheckFailed (or anything) otherwise


def readiness(settings: Settings, config: WebConfig) -> tuple[bool, dict]:
    """Run every check within the deadline; returns (ok, {name: {"ok", "detail", "ms"}})."""
    checks: dict[str, Check] = {
        "env": lambda: check_env(config),
        "users_file": lambda: check_users_file(settings, config),
        "database": lambda: check_database(settings, config),
        "alembic": lambda: check_alembic(settings),
    }
    results = run_with_deadline(checks, config.readyz_deadline_sec)
    for result in results.values():
        result["detail"] = config.mask(mask_secrets(result["detail"]))
    ok = all(r["ok"] for r in results.values())
    if not ok:
        log.warning("readyz failed: %s", "; ".join(f"{n}: {r['detail']}" for n, r in results.items() if not r["ok"]))
    return ok, results


def run_with_deadline(checks: dict[str, Check], deadline_sec: float) -> dict[str, dict]:
    started = time.monotonic()
    futures = {name: _POOL.submit(_timed, fn) for name, fn in checks.items()}
    wait(futures.values(), timeout=deadline_sec)
    return {name: _outcome(future, started, deadline_sec) for name, future in futures.items()}


def _timed(fn: Check) -> dict:
    started = time.monotonic()
    try:
        ok, detail = True, fn()
    except CheckFailed as exc:
        ok, detail = False, str(exc)
    except RollbackError as exc:
        ok, detail = False, str(exc)
    except Exception as exc:  # a check must report, never crash the probe
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": ok, "detail": detail, "ms": _ms(started)}


def _outcome(future: Future, started: float, deadline_sec: float) -> dict:
    if future.done():
        return future.result()
    future.cancel()  # not started yet: do not run it late
    return {"ok": False, "detail": f"timed out after {deadline_sec:g} s", "ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


# -- the checks -------------------------------------------------------------------------------
def check_env(config: WebConfig) -> str:
    return check_required_env(config.required_env, config.missing_env)


def check_users_file(settings: Settings, config: WebConfig) -> str:
    return check_json_file(settings.data_base_dir / config.users_file)


def _connect(settings: Settings) -> psycopg.Connection:
    try:
        conn = psycopg.connect(settings.database.conninfo(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SEC,
                               application_name="readyz")
    except psycopg.OperationalError as exc:
        lines = str(exc).strip().splitlines()
        why = lines[-1] if lines else type(exc).__name__
        raise CheckFailed(f"database {settings.database.dbname} unreachable: {why}") from None
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    return conn


def check_database(settings: Settings, config: WebConfig) -> str:
    """Reachable, and each READYZ_TABLES table exists with at least its minimum of rows."""
    with _connect(settings) as conn:
        conn.execute("select 1")
        for table in config.tables:
            _check_table(conn, table.name, table.min_rows)
    tables = ", ".join(f"{t.name}>={t.min_rows}" for t in config.tables) or "no tables configured (READYZ_TABLES)"
    return f"database {settings.database.dbname} reachable; {tables}"


def _check_table(conn: psycopg.Connection, name: str, min_rows: int) -> None:
    ident = sql.Identifier(*name.split("."))
    if conn.execute("select to_regclass(%s)", (ident.as_string(conn),)).fetchone()[0] is None:
        raise CheckFailed(f"table {name} does not exist")
    # Count at most min_rows rows: the check stays cheap on a big table.
    query = sql.SQL("select count(*) from (select 1 from {} limit %s) s").format(ident)
    try:
        rows = conn.execute(query, (min_rows,)).fetchone()[0]
    except psycopg.errors.QueryCanceled:
        raise CheckFailed(f"table {name}: no answer within {STATEMENT_TIMEOUT_MS} ms (locked?)") from None
    if rows < min_rows:
        raise CheckFailed(f"table {name} has {rows} rows, at least {min_rows} required")


def check_alembic(settings: Settings) -> str:
    """The database is at the head revision of the migrations in the deployed code."""
    heads = ",".join(migrations_info.code_heads(settings)) or None
    with _connect(settings) as conn:
        exists = conn.execute("select to_regclass('public.alembic_version') is not null").fetchone()[0]
        rows = [r[0] for r in conn.execute("select version_num from alembic_version order by 1")] if exists else []
    current = ",".join(rows) or None
    if current != heads:
        raise CheckFailed(f"database at {current}, code head {heads}")
    return f"database at {current}, code head {heads}"
