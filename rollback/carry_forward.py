"""Carry forward: re-apply writes a restore discarded, from its report (rollback/discarded.py).

Rows: the chosen operations of the chosen tables are applied to the restored (live) database in ONE
transaction. Each row runs under a savepoint, so a row that conflicts with the restored schema or keys
(a key the app has reused since the restore, a column the restored schema lacks that is NOT NULL, a
foreign key to a row that is not there ...) is skipped and listed, and the others still apply. The
row's values go through `jsonb_populate_record`, so every type comes back exactly as the report wrote
it. Columns the restored schema does not have are dropped (and named). The sequences behind the
table's columns are then advanced past the carried keys, so the app's next insert cannot collide.
`dry_run` does all of it and rolls back (sequences, which a rollback would not undo, are only reported).

Files: the data files added since the snapshot that do not exist in the restored tree are copied back
from the replaced tree (`.pre-<txn>`).

Both are audited in rollback.log; both refuse while a restore owns the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from . import logbook, pg
from .diff.tables import table_inventory
from .discarded_summary import OPS
from .discarded import DONE, FILES, ReportNotFound, copies, read_lines, report_dir, require_summary, table_entry
from .errors import LockHeld, RollbackError
from .fsutil import fsync_dir
from .journal import Journal
from .lock import ServiceLock, describe_holder
from .settings import Settings

NO_EQUALITY_TYPES = {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}
MAX_LISTED = 50  # skipped rows listed in the result (all are counted)


def _ready_summary(settings: Settings, txn: str) -> dict:
    summary = require_summary(settings, txn)
    if summary.get("status") != DONE:
        raise ReportNotFound(f"the discarded-writes report of {txn} is {summary.get('status')}"
                             + (f": {summary['error']}" if summary.get("error") else "; wait for it to finish"))
    return summary


def carry_rows(settings: Settings, txn: str, tables: list[str] | str, ops: tuple[str, ...] = OPS,
               dry_run: bool = False) -> dict:
    """Re-apply the discarded `ops` rows of `tables` (in the order given: parents before children) in
    ONE transaction; returns per table what was (or, with `dry_run`, would be) applied and skipped."""
    tables = [tables] if isinstance(tables, str) else list(tables)
    bad = [op for op in ops if op not in OPS]
    if bad or not ops:
        raise RollbackError(f"--op must be one of {', '.join(OPS)} (got {', '.join(bad) or 'none'})")
    if not tables:
        raise RollbackError("name at least one table (--table T)")
    summary = _ready_summary(settings, txn)
    entries = [table_entry(summary, table) for table in tables]
    result = {"txn": txn, "ops": list(ops), "dry_run": dry_run, "applied": 0, "skipped": 0, "tables": []}
    with _service_free(settings, "carry-forward"), pg.connect(settings.database) as conn:
        inventory = table_inventory(conn)
        try:
            with conn.transaction():
                for entry in entries:
                    part = _carry_table(conn, settings, txn, entry, inventory, ops, dry_run)
                    result["tables"].append(part)
                    result["applied"] += part["applied"]
                    result["skipped"] += part["skipped"]
                if dry_run:
                    raise _DryRun()
        except _DryRun:
            pass
    return _audited(settings, result)


def _carry_table(conn: psycopg.Connection, settings: Settings, txn: str, entry: dict, inventory: dict,
                 ops: tuple[str, ...], dry_run: bool) -> dict:
    result = {"table": entry["table"], "applied": 0, "applied_by_op": dict.fromkeys(ops, 0), "skipped": 0,
              "skipped_rows": [], "dropped_columns": [], "sequences": []}
    if not entry.get("file"):
        result["note"] = f"nothing to carry forward ({entry['status']})"
        return result
    target = inventory.get(tuple(entry["table"].split(".", 1)))
    if target is None:
        raise RollbackError(f"table {entry['table']} does not exist in the restored database; nothing applied")
    if entry["key"] != target.key:
        raise RollbackError(f"the primary key of {entry['table']} is {target.key or 'absent'} in the restored "
                            f"database, {entry['key']} in the report; nothing applied")
    dropped: set[str] = set()
    for record in read_lines(report_dir(settings, txn) / entry["file"]):
        if record["op"] in ops:
            dropped |= set(record["row"]) - set(target.columns)
            _apply(conn, target, record, result)
    result["sequences"] = _advance_sequences(conn, target, apply=not dry_run)
    result["dropped_columns"] = sorted(dropped)
    return result


class _DryRun(Exception):
    """Raised inside the transaction to roll it back after a dry run."""


def _apply(conn: psycopg.Connection, target, record: dict, result: dict) -> None:
    op, row = record["op"], record["row"]
    try:
        with conn.transaction():  # a savepoint: a conflicting row is rolled back alone
            cur = conn.execute(_statement(target, op, row), {"row": _json(row), "before": _json(record.get("before"))})
            if cur.rowcount != 1:
                raise _Conflict("key not found" if op == "delete" else
                                "key not found, or the row changed since the restore")
    except (psycopg.Error, _Conflict) as exc:
        result["skipped"] += 1
        if len(result["skipped_rows"]) < MAX_LISTED:
            reason = str(exc).splitlines()[0]
            if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
                reason = " ".join(filter(None, [exc.diag.message_primary, exc.diag.message_detail]))
            result["skipped_rows"].append({"op": op, "key": record["key"], "reason": reason})
        return
    result["applied"] += 1
    result["applied_by_op"][op] += 1


class _Conflict(Exception):
    pass


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _statement(target, op: str, row: dict) -> sql.Composable:
    """INSERT / UPDATE / DELETE of one reported row; values come from jsonb_populate_record, so
    Postgres parses each from its own JSON text, as its column type says."""
    table = target.ident
    cols = [c for c in target.columns if c in row]
    key = sql.SQL(", ").join(sql.Identifier(k) for k in target.key)
    source = sql.SQL("jsonb_populate_record(null::{}, %(row)s::jsonb)").format(table)
    if op == "insert":
        names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        return sql.SQL("insert into {t} ({names}) overriding system value select {names} from {src}").format(
            t=table, names=names, src=source)
    match = sql.SQL("({key}) = (select {key} from {src})").format(key=key, src=source)
    if op == "delete":
        return sql.SQL("delete from {t} where {m}").format(t=table, m=match)
    # update: only where the row is still what the restore brought back (the report's `before`), so a
    # change made in the restored app since is never overwritten
    changed = sql.SQL(", ").join(sql.Identifier(c) for c in cols if c not in target.key)
    before = sql.SQL("jsonb_populate_record(null::{}, %(before)s::jsonb)").format(table)
    same = sql.SQL(" and ").join(_same_value(c, target.columns[c]) for c in cols)
    return sql.SQL("update {t} as t set ({changed}) = (select {changed} from {src}) from {before} as b "
                   "where ({tkey}) = (select {key} from {src}) and {same}").format(
        t=table, changed=changed, src=source, before=before, same=same, key=key,
        tkey=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in target.key))


def _same_value(column: str, type_name: str) -> sql.Composable:
    """t.column equals b.column; types without an equality operator (json, xml, geometric) compare as text,
    which is exact here: both sides are the restored row's own values."""
    ident = sql.Identifier(column)
    if type_name.removesuffix("[]") in NO_EQUALITY_TYPES:
        return sql.SQL("t.{c}::text is not distinct from b.{c}::text").format(c=ident)
    return sql.SQL("t.{c} is not distinct from b.{c}").format(c=ident)


def _advance_sequences(conn: psycopg.Connection, target, apply: bool = True) -> list[dict]:
    """setval every sequence owned by a column of the table (serial or identity) to at least the
    column's maximum, so the app's next nextval() is past every carried key. setval is not undone by a
    rollback: with `apply` false (a dry run) the change is only reported."""
    advanced = []
    for column in target.columns:
        seq = conn.execute("select pg_get_serial_sequence(%s, %s)",
                           (sql.Identifier(target.schema, target.name).as_string(conn), column)).fetchone()[0]
        if not seq:
            continue
        top = conn.execute(sql.SQL("select max({}) from {}").format(sql.Identifier(column), target.ident)).fetchone()[0]
        last, called = conn.execute(sql.SQL("select last_value, is_called from {}").format(
            sql.SQL(seq))).fetchone()
        current = last if called else last - 1
        if top is not None and top > current:
            if apply:
                conn.execute("select setval(%s, %s, true)", (seq, top))
            advanced.append({"sequence": seq, "column": column, "from": current, "to": top})
    return advanced


# -- files ------------------------------------------------------------------------------------
def carry_files(settings: Settings, txn: str, dry_run: bool = False) -> dict:
    """Copy back the data files added since the snapshot that the restored tree does not have."""
    summary = _ready_summary(settings, txn)
    _, pre_tree = copies(settings, Journal(settings.backup_dir).load(txn))
    listing = report_dir(settings, txn) / FILES
    result = {"txn": txn, "files": True, "dry_run": dry_run, "copied": [], "skipped": []}
    if not (summary.get("files") or {}).get("file") or not listing.is_file():
        result["note"] = "the report lists no data files"
        return _audited(settings, result)
    if not pre_tree.is_dir():
        raise RollbackError(f"the replaced data tree {pre_tree} is gone (removed by cleanup?); nothing copied")
    live = settings.data_base_dir
    with _service_free(settings, "carry-forward"):
        for record in read_lines(listing):
            if record["op"] != "added":
                continue
            rel = Path(record["path"])
            source, dest = pre_tree / rel, live / rel
            if ".." in rel.parts or rel.is_absolute():
                result["skipped"].append({"path": record["path"], "reason": "not a path inside the data tree"})
            elif os.path.lexists(dest):
                result["skipped"].append({"path": record["path"], "reason": "exists in the restored tree"})
            elif not os.path.lexists(source):
                result["skipped"].append({"path": record["path"], "reason": f"gone from {pre_tree}"})
            else:
                if not dry_run:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, dest, follow_symlinks=False)
                    fsync_dir(dest.parent)
                result["copied"].append(record["path"])
    return _audited(settings, result)


@contextlib.contextmanager
def _service_free(settings: Settings, what: str) -> Iterator[None]:
    """Hold the service lock for the carry-forward; refuse while a restore owns the service."""
    lock = ServiceLock(settings.backup_dir)
    with lock.held({"kind": what}, wait_sec=5):
        active = lock.active()
        if active:
            raise LockHeld(f"refused: {describe_holder(active)}", active)
        yield


def _audited(settings: Settings, result: dict) -> dict:
    if result.get("files"):
        fields = {"files": len(result["copied"]), "skipped": len(result["skipped"])}
    else:
        fields = {"tables": ",".join(t["table"] for t in result["tables"]), "ops": ",".join(result["ops"]),
                  "applied": result["applied"], "skipped": result["skipped"],
                  "sequences": ",".join(f"{s['sequence']}={s['to']}" for t in result["tables"]
                                        for s in t["sequences"]) or None}
    logbook.rollback_event(settings.rollback_log, result["txn"], "carry-forward",
                           "dry_run" if result["dry_run"] else "ok", **fields)
    return result
