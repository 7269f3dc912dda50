"""Small Postgres helpers on psycopg 3: connections, database copies, renames, inventories."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import psycopg
from psycopg import sql

from .errors import RollbackError
from .settings import DatabaseTarget

MAINTENANCE_DBS = ("postgres", "template1")
CONNECT_TIMEOUT = 10


@contextlib.contextmanager
def connect(target: DatabaseTarget, dbname: str | None = None) -> Iterator[psycopg.Connection]:
    """An autocommit connection; errors become one-line RollbackErrors without the password."""
    name = dbname or target.dbname
    try:
        conn = psycopg.connect(target.conninfo(name), autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="rollback")
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RollbackError(f"database {name} on {target.host}:{target.port} unreachable: {first}") from None
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def connect_maintenance(target: DatabaseTarget) -> Iterator[psycopg.Connection]:
    """A connection to a database other than the protected one, for CREATE/DROP/RENAME DATABASE."""
    last: RollbackError | None = None
    for name in MAINTENANCE_DBS:
        if name == target.dbname:
            continue
        try:
            with connect(target, name) as conn:
                yield conn
                return
        except RollbackError as exc:
            last = exc
    raise last or RollbackError("no maintenance database reachable")


def alembic_revision(target: DatabaseTarget, dbname: str | None = None) -> str | None:
    """The revision(s) in alembic_version, comma-joined; None when the table is absent or empty."""
    with connect(target, dbname) as conn:
        exists = conn.execute("select to_regclass('public.alembic_version') is not null").fetchone()[0]
        if not exists:
            return None
        rows = [r[0] for r in conn.execute("select version_num from alembic_version order by 1")]
    return ",".join(rows) or None


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def database_owner(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = %s", (name,)).fetchone()
    if row is None:
        raise RollbackError(f"database {name} does not exist")
    return row[0]


def terminate_sessions(conn: psycopg.Connection, name: str) -> int:
    """Terminate every other session on database `name`; return how many were ended."""
    rows = conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
        (name,),
    ).fetchall()
    return len(rows)


def _with_sessions_ended(conn: psycopg.Connection, names: tuple[str, ...], *statements: sql.Composable,
                         attempts: int = 10) -> None:
    """Run statements that need databases `names` to have no sessions, ending any that reconnect
    meanwhile. Several statements run in one transaction (all or none); a single one runs alone
    (CREATE DATABASE cannot run inside a transaction block)."""
    for attempt in range(attempts):
        for name in names:
            terminate_sessions(conn, name)
        try:
            if len(statements) == 1:
                conn.execute(statements[0])
            else:
                with conn.transaction():
                    for statement in statements:
                        conn.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            if attempt == attempts - 1:
                raise RollbackError(f"database {' or '.join(names)} stays in use by other sessions") from None
            time.sleep(0.2 * (attempt + 1))


def copy_database(conn: psycopg.Connection, source: str, dest: str) -> None:
    """CREATE DATABASE dest TEMPLATE source (a file-level copy), same owner as the source."""
    owner = database_owner(conn, source)
    stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY FILE_COPY").format(
        sql.Identifier(dest), sql.Identifier(source), sql.Identifier(owner))
    _with_sessions_ended(conn, (source,), stmt)


def drop_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def end_statements_naming(conn: psycopg.Connection, name: str, wait_ms: int = 5000) -> int:
    """Terminate other backends whose current statement names database `name` (a CREATE or DROP left
    running by a killed client) and wait for them to exit; return how many there were."""
    rows = conn.execute(
        "select pg_terminate_backend(pid, %s) from pg_stat_activity "
        "where pid <> pg_backend_pid() and state <> 'idle' and position(%s in query) > 0",
        (wait_ms, name)).fetchall()
    return len(rows)


def recreate_empty_database(conn: psycopg.Connection, name: str, like: str, attempts: int = 3) -> None:
    """Drop `name` if it exists and create it empty like `like`. A killed earlier attempt can leave its
    CREATE DATABASE still committing on the server: that statement is ended and the drop repeated."""
    for attempt in range(attempts):
        end_statements_naming(conn, name)
        drop_database(conn, name)
        try:
            create_empty_database(conn, name, like)
            return
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            if attempt == attempts - 1:
                raise RollbackError(f"database {name} keeps being created by another session; "
                                    f"drop it by hand and retry") from None
            time.sleep(0.2 * (attempt + 1))


def rename_database(conn: psycopg.Connection, source: str, dest: str) -> None:
    stmt = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(source), sql.Identifier(dest))
    _with_sessions_ended(conn, (source,), stmt)


def swap_database_names(conn: psycopg.Connection, live: str, new: str, pre: str) -> None:
    """live -> pre and new -> live in ONE transaction: a crash leaves either both renames or neither,
    so there is always a database under the live name."""
    _with_sessions_ended(conn, (live, new),
                         sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(live), sql.Identifier(pre)),
                         sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(new), sql.Identifier(live)))


def create_empty_database(conn: psycopg.Connection, name: str, like: str) -> None:
    """A fresh database from template0 with the owner, encoding and locale of `like`."""
    row = conn.execute(
        "select pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
        "from pg_database where datname = %s", (like,)).fetchone()
    if row is None:
        raise RollbackError(f"database {like} does not exist")
    owner, encoding, collate, ctype = row
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
        sql.Identifier(name), sql.Identifier(owner), sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype)))


def copy_database_settings(conn: psycopg.Connection, source: str, dest: str) -> None:
    """Carry `ALTER DATABASE ... SET` parameters (not part of a pg_dump archive) over to dest."""
    rows = conn.execute(
        "select unnest(s.setconfig) from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
        "where d.datname = %s and s.setrole = 0", (source,)).fetchall()
    for (item,) in rows:
        key, _, value = item.partition("=")
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(dest), sql.Identifier(key), sql.Literal(value)))


def relation_inventory(target: DatabaseTarget) -> set[tuple[str, str]]:
    """(schema, name) of every table, view, sequence and index outside the system schemas."""
    with connect(target) as conn:
        rows = conn.execute(
            "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind in ('r','p','v','m','S','i','I','f') "
            "and n.nspname not in ('pg_catalog','information_schema') and n.nspname not like 'pg_toast%%' "
            "and n.nspname not like 'pg_temp%%'").fetchall()
    return {(r[0], r[1]) for r in rows}
