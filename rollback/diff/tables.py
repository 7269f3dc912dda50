"""Two databases compared table by table on primary keys, streamed: what one has that the other lacks.

Both sides are read with server-side cursors, BATCH_ROWS rows per round trip, in the same key order
(integer keys as numbers, any other key by its text in the "C" collation, which is byte order, the order
Python compares the same strings in), and merged here, so memory stays bounded whatever the table's size
(Postgres cannot join across databases). Rows are compared by the JSON text of their common columns
(`to_jsonb`), which is exact for every type and re-insertable (`jsonb_populate_record`). Differences are
written as JSON Lines, one file per table (rollback/discarded.py gives them their meaning).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import psycopg
from psycopg import sql

from .. import pg
from ..fsutil import open_private
from ..progress import NO_PROGRESS, Progress
from ..settings import Settings

BATCH_ROWS = 2000  # rows fetched per round trip from each side: the memory bound of a comparison
SKIPPED_TABLES = {("public", "alembic_version")}  # the schema revision: a plan's `alembic` says it
INTEGER_TYPES = {"smallint", "integer", "bigint"}


@dataclass
class TableInfo:
    schema: str
    name: str
    columns: dict[str, str]  # name -> type, in column order
    key: list[str]
    estimate: int = 0

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


@dataclass
class TableResult:
    table: str
    status: str
    key: list[str] = field(default_factory=list)
    insert: int = 0
    update: int = 0
    delete: int = 0
    rows_replaced: int | None = None
    rows_restored: int | None = None
    columns_only_in_replaced: list[str] = field(default_factory=list)
    columns_only_in_restored: list[str] = field(default_factory=list)
    file: str | None = None
    written_after_restore: int = 0  # rows of the restored side written by the app before the report ran


def table_inventory(conn: psycopg.Connection) -> dict[tuple[str, str], TableInfo]:
    """Ordinary and partitioned tables of the user schemas, with columns and primary key."""
    rows = conn.execute("""
        select n.nspname, c.relname, c.reltuples::bigint,
               array(select a.attname from pg_attribute a where a.attrelid = c.oid and a.attnum > 0
                     and not a.attisdropped order by a.attnum),
               array(select format_type(a.atttypid, a.atttypmod) from pg_attribute a where a.attrelid = c.oid
                     and a.attnum > 0 and not a.attisdropped order by a.attnum),
               array(select a.attname from pg_index i
                     join lateral unnest(i.indkey) with ordinality as k(attnum, pos) on true
                     join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                     where i.indrelid = c.oid and i.indisprimary order by k.pos)
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p') and not c.relispartition
          and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
        order by 1, 2""").fetchall()
    return {(s, t): TableInfo(s, t, dict(zip(cols, types)), list(key), max(int(est), 0))
            for s, t, est, cols, types, key in rows}


def compare_databases(settings: Settings, replaced: str, restored: str, folder: Path,
                      progress: Progress = NO_PROGRESS, notes: list[str] | None = None,
                      restored_xid: int | None = None) -> list[dict]:
    """Compare every table of `replaced` with `restored`; one JSON Lines file per table with differences.
    Rows of `restored` written by a transaction from `restored_xid` on were written after the restore."""
    notes = notes if notes is not None else []
    if restored_xid is None:
        notes.append("the restore recorded no transaction id: rows the app wrote into the restored database "
                     "before this report ran show as deletes or updates")
    with pg.connect_maintenance(settings.database) as conn:
        if not pg.database_exists(conn, replaced):
            notes.append(f"the replaced database {replaced} no longer exists: no table was compared")
            return []
    with pg.connect(settings.database, replaced) as old, pg.connect(settings.database, restored) as new:
        for conn in (old, new):  # the JSON text of timestamps depends on the session's time zone
            conn.execute("set timezone = 'UTC'")
            conn.execute("set extra_float_digits = 3")
        before, after = table_inventory(old), table_inventory(new)
        names = sorted((set(before) | set(after)) - SKIPPED_TABLES)
        results = []
        for index, name in enumerate(names):
            progress(index, len(names), f"comparing {name[0]}.{name[1]}")
            part = progress.fraction(index / max(len(names), 1), 1 / max(len(names), 1))
            results.append(_compare_table(old, new, before.get(name), after.get(name), folder, part, restored_xid))
        progress(len(names), len(names), f"{len(names)} tables compared")
    return [r.__dict__ for r in results]


def _compare_table(old, new, replaced: TableInfo | None, restored: TableInfo | None, folder: Path,
                   progress: Progress, restored_xid: int | None = None) -> TableResult:
    info = replaced or restored
    result = TableResult(info.qualified, "compared")
    if restored is None:
        result.status, result.rows_replaced = "only_in_replaced", _count(old, replaced)
        if not replaced.key:
            return result
        result.key = replaced.key
        return _merge(old, new, replaced, None, result, folder, progress)
    if replaced is None:
        result.status, result.rows_restored = "only_in_restored", _count(new, restored)
        return result
    result.columns_only_in_replaced = [c for c in replaced.columns if c not in restored.columns]
    result.columns_only_in_restored = [c for c in restored.columns if c not in replaced.columns]
    if not replaced.key or replaced.key != restored.key:
        result.status = "no_primary_key" if not (replaced.key and restored.key) else "primary_key_changed"
        result.rows_replaced, result.rows_restored = _count(old, replaced), _count(new, restored)
        return result
    result.key = replaced.key
    return _merge(old, new, replaced, restored, result, folder, progress, restored_xid)


def _count(conn, table: TableInfo) -> int:
    return conn.execute(sql.SQL("select count(*) from {}").format(table.ident)).fetchone()[0]


def _merge(old, new, replaced: TableInfo, restored: TableInfo | None, result: TableResult, folder: Path,
           progress: Progress, restored_xid: int | None = None) -> TableResult:
    """Walk both sides in key order; what only the replaced side has was inserted since the snapshot,
    what only the restored side has was deleted, what differs on the common columns was updated.
    A restored row written after the restore says nothing of the snapshot: a key only it has is the
    app's since (not reported); a key both have is reported as the replaced side's insert, flagged
    `after_restore` (it may also have been an update: carrying it forward as an insert conflicts)."""
    numeric = all(replaced.columns[k] in INTEGER_TYPES and (restored is None or restored.columns[k] in INTEGER_TYPES)
                  for k in replaced.key)
    common = [c for c in replaced.columns if restored is None or c in restored.columns]
    path = folder / (quote(result.table, safe="") + ".jsonl")
    counts = {"insert": 0, "update": 0, "delete": 0}
    total = max(replaced.estimate, 1)
    seen = 0
    with open_private(path) as out:
        def emit(op: str, row: str, before: str | None = None, after_restore: bool = False) -> None:
            counts[op] += 1
            key = json.dumps(dict(zip(replaced.key, _key_values(row, replaced.key))), ensure_ascii=False)
            extra = (f', "before": {before}' if before is not None else "") + \
                (', "after_restore": true' if after_restore else "")
            out.write(f'{{"op": "{op}", "key": {key}, "row": {row}{extra}}}\n')

        left = _stream(old, replaced, common, numeric)
        right = _stream(new, restored, common, numeric, restored_xid) if restored is not None else iter(())
        a, b = next(left, None), next(right, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b[0]):
                emit("insert", a[2])
                a = next(left, None)
            elif a is None or b[0] < a[0]:
                if b[3]:
                    result.written_after_restore += 1
                else:
                    emit("delete", b[2])
                b = next(right, None)
            else:
                if b[3]:
                    result.written_after_restore += 1
                    if a[1] != b[1]:
                        emit("insert", a[2], after_restore=True)
                elif a[1] != b[1]:
                    emit("update", a[2], before=b[2])
                a, b = next(left, None), next(right, None)
            seen += 1
            if seen % BATCH_ROWS == 0:
                progress(min(seen, total), total, f"{result.table}: {seen} rows compared")
    result.insert, result.update, result.delete = counts["insert"], counts["update"], counts["delete"]
    if any(counts.values()):
        result.file = path.name
    else:
        path.unlink()
    progress(total, total, f"{result.table}: {seen} rows compared")
    return result


def _key_values(row_json: str, key: list[str]) -> list:
    row = json.loads(row_json)
    return [row.get(k) for k in key]


def _stream(conn, table: TableInfo, common: list[str], numeric: bool,
            written_from: int | None = None) -> Iterator[tuple[tuple, str, str, bool]]:
    """(key, JSON of the common columns, JSON of the whole row, written from transaction `written_from`
    on) in key order, BATCH_ROWS at a time. Integer keys are ordered as numbers; any other key by its
    text in the "C" collation (byte order), which is the order Python compares the same strings in."""
    keys = [sql.SQL("t.{}").format(sql.Identifier(k)) if numeric else
            sql.SQL('t.{}::text collate "C"').format(sql.Identifier(k)) for k in table.key]
    extra = [c for c in table.columns if c not in common]
    # xids wrap at 2^32: "from then on" is "no older than then", age() counts from now
    since = sql.SQL("age(t.xmin) <= age({}::text::xid)").format(sql.Literal(str(written_from % (1 << 32)))) \
        if written_from is not None else sql.SQL("false")
    query = sql.SQL("select {keys}, (to_jsonb(t) - {extra}::text[])::text, to_jsonb(t)::text, {since} from {table} t "
                    "order by {keys}").format(keys=sql.SQL(", ").join(keys), extra=sql.Literal(extra),
                                              since=since, table=table.ident)
    n = len(keys)
    with conn.transaction():
        with conn.cursor(name=f"discarded_{os.getpid()}_{id(table)}") as cur:
            cur.itersize = BATCH_ROWS
            cur.execute(query)
            for row in cur:
                yield tuple(row[:n]), row[n], row[n + 1], row[n + 2]
