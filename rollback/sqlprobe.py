"""Short, bounded database probes through SQLAlchemy, for the in-app readiness check (rollback.flask).

Any SQLAlchemy engine and driver (psycopg2, psycopg 3, ...): each probe runs in its own short
transaction with a Postgres statement timeout, and every problem becomes one line (CheckFailed)
without the statement, SQLAlchemy's background link or a password. Needs SQLAlchemy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from .readiness import CheckFailed

STATEMENT_TIMEOUT_MS = 1000
CONNECT_TIMEOUT_SEC = 2  # for engines made here; libpq's minimum
QUERY_CANCELED = "57014"

T = TypeVar("T")


@dataclass(frozen=True)
class TableCheck:
    name: str  # table or schema.table
    min_rows: int = 0


def create_engine(url: str) -> Engine:
    """An engine for `url` as given (the app's own driver, never rewritten), with a connect timeout
    for the libpq drivers and pre-ping so a restored database is picked up."""
    parsed = make_url(url)
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg") \
            and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SEC
    return sqlalchemy.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def with_connection(engine: Engine | CheckFailed, probe: Callable[..., T]) -> T:
    """Run `probe(conn)` in a short transaction with a statement timeout. A connection the pool hands
    out dead (the database was swapped by a restore, or restarted) gets one fresh retry."""
    if isinstance(engine, CheckFailed):  # the engine itself could not be had: say why
        raise engine
    for attempt in (1, 2):
        try:
            conn = engine.connect()
        except DBAPIError as exc:
            raise CheckFailed(f"database {db_label(engine)} unreachable: {db_error(exc)}") from None
        try:
            with conn, conn.begin():
                if conn.dialect.name == "postgresql":  # LOCAL: ends with this transaction, not the pooled session
                    conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                return probe(conn)
        except DBAPIError as exc:
            if attempt == 1 and exc.connection_invalidated:
                continue
            if sqlstate(exc) == QUERY_CANCELED:
                raise CheckFailed(f"database {db_label(engine)}: no answer within {STATEMENT_TIMEOUT_MS} ms "
                                  "(locked?)") from None
            raise CheckFailed(f"database {db_label(engine)}: {db_error(exc)}") from None
    raise CheckFailed(f"database {db_label(engine)}: connection lost twice")


def check_table(conn, table: TableCheck) -> None:
    """The table exists and has at least `min_rows` rows (counting no more than that)."""
    schema, _, name = table.name.rpartition(".")
    if not sqlalchemy.inspect(conn).has_table(name, schema=schema or None):
        raise CheckFailed(f"table {table.name} does not exist")
    quote = conn.dialect.identifier_preparer.quote
    ident = ".".join(quote(part) for part in table.name.split("."))
    rows = conn.execute(text(f"select count(*) from (select 1 from {ident} limit :n) s"),
                        {"n": table.min_rows}).scalar()
    if rows < table.min_rows:
        raise CheckFailed(f"table {table.name} has {rows} rows, at least {table.min_rows} required")


def alembic_revision(conn) -> str | None:
    """The database's Alembic revision(s), sorted and comma-joined; None for an unversioned schema."""
    if not sqlalchemy.inspect(conn).has_table("alembic_version"):
        return None
    rows = conn.execute(text("select version_num from alembic_version")).scalars().all()
    return ",".join(sorted(rows)) or None


def db_label(engine) -> str:
    return getattr(getattr(engine, "url", None), "database", None) or "?"


def sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE of psycopg2 (pgcode) or psycopg 3 (sqlstate) errors."""
    return getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)


def db_error(exc: DBAPIError) -> str:
    """The driver's message on one line, without SQLAlchemy's statement and background link."""
    lines = [line.strip() for line in str(exc.orig or exc).splitlines() if line.strip()]
    return (" ".join(lines) or type(exc.orig).__name__)[:300]
