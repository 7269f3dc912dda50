"""What a snapshot's database holds, counted when it is taken, so that a later restore (a drill, a plan)
can be compared with it: rows per table, and the write counters a plan estimates changes from. (The data
tree's counterpart, its listing and summary, is built from the archive after the snapshot:
rollback.tree_index.)

- `table_row_counts(settings)`: exact `count(*)` of every ordinary or partitioned table outside the
  system schemas, keyed `schema.table`. With `exported_row_counts` the counts are taken in a
  REPEATABLE READ transaction whose snapshot pg_dump then dumps (`pg_dump --snapshot`), so the
  recorded counts are exactly the dump's, even while the app writes.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import psycopg
from psycopg import sql

from . import pg
from .errors import RollbackError
from .settings import Settings
from .tree_index import DATA_LISTING, DATA_SUMMARY

_TABLES_SQL = (
    "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
    "where c.relkind in ('r', 'p') and not c.relispartition "
    "and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%%' "
    "and n.nspname not like 'pg_temp%%' order by 1, 2")


def _count_tables(conn: psycopg.Connection) -> dict[str, int]:
    counts = {}
    for schema, name in conn.execute(_TABLES_SQL).fetchall():
        query = sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        counts[f"{schema}.{name}"] = int(conn.execute(query).fetchone()[0])
    return counts


def table_row_counts(settings: Settings, dbname: str | None = None) -> dict[str, int]:
    """Exact row counts per table (`schema.table` -> rows) of the live database, or of `dbname`
    (a side database on the same server). Partitions count in their parent only."""
    try:
        with pg.connect(settings.database, dbname) as conn, conn.transaction():
            conn.execute("set transaction isolation level repeatable read, read only")
            return _count_tables(conn)
    except psycopg.Error as exc:
        raise _counting_failed(dbname or settings.database.dbname, exc) from None


@contextlib.contextmanager
def exported_row_counts(settings: Settings) -> Iterator[tuple[str, dict[str, int]]]:
    """Yield (snapshot name, row counts) from a transaction kept open until the block ends; pass the
    name to `pg_dump --snapshot` inside the block and the dump holds exactly the counted rows. The
    counts are taken in a thread while the block runs (pg_dump reading the same snapshot meanwhile, so
    counting adds no time of its own); the dict is complete when the block ends."""
    with pg.connect(settings.database) as conn:
        try:
            conn.execute("begin isolation level repeatable read, read only")
            name = conn.execute("select pg_export_snapshot()").fetchone()[0]
        except psycopg.Error as exc:
            raise _counting_failed(settings.database.dbname, exc) from None
        counts: dict[str, int] = {}
        failed: list[psycopg.Error] = []

        def count() -> None:
            try:
                counts.update(_count_tables(conn))
            except psycopg.Error as exc:
                failed.append(exc)

        counter = threading.Thread(target=count, name="row-counts", daemon=True)
        counter.start()
        try:
            yield name, counts
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.cancel()  # the snapshot failed anyway: do not finish counting
            raise
        finally:
            counter.join()
            with contextlib.suppress(psycopg.Error):
                conn.execute("rollback")
        if failed:
            raise _counting_failed(settings.database.dbname, failed[0])


def _counting_failed(dbname: str, exc: psycopg.Error) -> RollbackError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RollbackError(f"counting rows in {dbname}: {first}")


def write_counters(settings: Settings) -> dict:
    """pg_stat_user_tables' cumulative insert/update/delete counters per table, with what tells their
    epoch (the database's oid and stats reset time): a plan subtracts them from today's for cheap
    estimates of the writes since the snapshot."""
    with pg.connect(settings.database) as conn:
        oid, reset = conn.execute("select d.oid, s.stats_reset from pg_database d left join pg_stat_database s "
                                  "on s.datid = d.oid where d.datname = current_database()").fetchone()
        rows = conn.execute("select schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del from pg_stat_user_tables")
        tables = {f"{schema}.{name}": [ins, upd, dele] for schema, name, ins, upd, dele in rows}
    return {"database_oid": int(oid), "stats_reset": str(reset) if reset else None, "tables": tables}


def record(counts: dict[str, int], counters: dict | None = None) -> dict:
    """The `stats` field a snapshot entry records. The data tree's listing and summary are named, not
    included: the index writes them beside the archive after the snapshot (rollback.tree_index)."""
    return {"tables": counts, "data_listing": DATA_LISTING, "data_summary": DATA_SUMMARY,
            "write_counters": counters}
