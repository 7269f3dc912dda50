"""`python -m manage.rollback discarded TXN [--json] [--build]` and
`python -m manage.rollback carry-forward TXN --table T [--op insert] [--dry-run] | --files [--json]`:
what a successful restore discarded (rollback/discarded.py) and re-applying chosen parts of it
(rollback/carry_forward.py), in this process."""

from __future__ import annotations

import json

from rollback.discarded_summary import DONE, OPS
from rollback.errors import RollbackError
from rollback.ids import validate_txn_id
from rollback.journal import Journal
from rollback.settings import Settings

from .exit_codes import EXIT_FAILED, EXIT_OK, UsageError

# rollback.discarded and rollback.carry_forward need psycopg: they are imported by the commands that use
# them, so that `rollback --help` also runs where only the in-app integration is installed.


def add_parsers(sub) -> None:
    s = sub.add_parser("discarded", help="show what a successful restore discarded: rows and files written "
                                         "after the snapshot (kept in the <db>__pre_ database and .pre- tree)")
    s.add_argument("txn", help="the restore's txn id")
    s.add_argument("--build", action="store_true", help="(re)make the report now in this process")
    s.add_argument("--json", action="store_true", help="print the report's summary as one JSON object")

    s = sub.add_parser("carry-forward", help="re-apply discarded rows of chosen tables into the restored "
                                             "database (one transaction), or copy back added data files")
    s.add_argument("txn", help="the restore's txn id")
    s.add_argument("--table", action="append", default=[], help="a table (repeat for several; parents first)")
    s.add_argument("--op", action="append", choices=OPS, help="only these operations (repeatable; default all)")
    s.add_argument("--files", action="store_true", help="copy back the data files added since the snapshot")
    s.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    s.add_argument("--json", action="store_true")


def _txn(settings: Settings, value: str) -> str:
    txn = validate_txn_id(value)
    if not Journal(settings.backup_dir).path(txn).is_file():
        raise UsageError(f"no restore transaction {txn} in {settings.backup_dir / 'journal'}")
    return txn


def run_discarded(settings: Settings, args, out) -> int:
    from rollback.discarded import ReportNotFound, build_report, require_summary

    txn = _txn(settings, args.txn)
    try:
        summary = build_report(settings, txn, progress=out) if args.build else require_summary(settings, txn)
    except ReportNotFound as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        for line in format_summary(summary):
            print(line)
    return EXIT_OK if summary.get("status") == DONE else EXIT_FAILED


def format_summary(summary: dict) -> list[str]:
    txn = summary["txn"]
    if summary.get("status") != DONE:
        return [f"discarded writes of {txn}: {summary.get('status', '?').upper()}"
                + (f": {summary['error']}" if summary.get("error") else " (the report is being made)")]
    t = summary["totals"]
    lines = [f"discarded writes of {txn} (snapshot {summary.get('snapshot_id')}): {t['insert']} inserted, "
             f"{t['update']} updated, {t['delete']} deleted row(s) since the snapshot in {t['tables_changed']} "
             f"table(s); kept in database {summary['replaced_database']}"]
    for table in summary["tables"]:
        status = table["status"]
        if status == "compared":
            if table["insert"] or table["update"] or table["delete"]:
                lines.append(f"  {table['table']:<32} {table['insert']:>6} inserted {table['update']:>6} updated "
                             f"{table['delete']:>6} deleted" + (f"  (columns only in the replaced database: "
                                                                 f"{', '.join(table['columns_only_in_replaced'])})"
                                                                 if table["columns_only_in_replaced"] else ""))
        elif status == "only_in_replaced":
            lines.append(f"  {table['table']:<32} table created since the snapshot: {table['rows_replaced']} row(s)")
        elif status == "only_in_restored":
            lines.append(f"  {table['table']:<32} table dropped since the snapshot (restored: {table['rows_restored']} row(s))")
        else:
            lines.append(f"  {table['table']:<32} {status.replace('_', ' ')}: rows {table['rows_replaced']} "
                         f"replaced / {table['rows_restored']} restored (not compared row by row)")
    files = summary["files"]
    lines.append(f"files: {files['added']} added, {files['changed']} changed, {files['removed']} removed since the "
                 f"snapshot; kept in {summary['replaced_tree']}")
    for op in ("added", "changed", "removed"):
        if files["first"][op]:
            lines.append(f"  {op}: " + ", ".join(files["first"][op]) + (" ..." if files[op] > len(files["first"][op]) else ""))
    lines += [f"note: {note}" for note in summary.get("notes") or []]
    lines.append(f"re-apply: python -m manage.rollback carry-forward {txn} --table T [--op insert] [--dry-run]; "
                 f"files: --files")
    return lines


def run_carry_forward(settings: Settings, args, out) -> int:
    txn = _txn(settings, args.txn)
    if bool(args.table) == bool(args.files):
        raise UsageError("give --table T (repeatable) or --files")
    from rollback.carry_forward import carry_files, carry_rows
    from rollback.discarded import ReportNotFound

    try:
        result = carry_files(settings, txn, dry_run=args.dry_run) if args.files else \
            carry_rows(settings, txn, args.table, tuple(args.op or OPS), dry_run=args.dry_run)
    except ReportNotFound as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    would = "would be " if args.dry_run else ""
    if args.files:
        print(f"carry-forward {txn} --files: {len(result['copied'])} file(s) {would}copied back, "
              f"{len(result['skipped'])} skipped" + (f" ({result['note']})" if result.get("note") else ""))
        print("".join(f"  copied  {p}\n" for p in result["copied"])
              + "".join(f"  skipped {s['path']}: {s['reason']}\n" for s in result["skipped"]), end="")
        return EXIT_OK
    print(f"carry-forward {txn} ({', '.join(result['ops'])}): {result['applied']} row(s) {would}applied, "
          f"{result['skipped']} skipped, in one transaction" + (" (dry run: rolled back)" if args.dry_run else ""))
    for table in result["tables"]:
        print(f"  {table['table']}: {table['applied']} {would}applied {table.get('applied_by_op')}, "
              f"{table['skipped']} skipped" + (f" ({table['note']})" if table.get("note") else ""))
        if table["dropped_columns"]:
            print(f"    columns not in the restored schema, left out: {', '.join(table['dropped_columns'])}")
        for seq in table["sequences"]:
            print(f"    sequence {seq['sequence']} {would}advanced {seq['from']} -> {seq['to']}")
        for row in table["skipped_rows"]:
            print(f"    skipped {row['op']} {json.dumps(row['key'], ensure_ascii=False)}: {row['reason']}")
        if table["skipped"] > len(table["skipped_rows"]):
            print(f"    ... and {table['skipped'] - len(table['skipped_rows'])} more skipped")
    return EXIT_OK


def report_after_local_restore(settings: Settings, txn: str, out) -> None:
    """`restore --local` / `resume --local`: make the discarded-writes report in this process once the
    restore is reported; a failure is a warning (the restore itself succeeded)."""
    out.line(f"comparing what {txn} replaced with what it restored (discarded-writes report)")
    from rollback.discarded import build_report

    try:
        summary = build_report(settings, txn, progress=out)
    except RollbackError as exc:
        out.line(f"warning: {exc}; retry with: python -m manage.rollback discarded {txn} --build")
        return
    t, f = summary["totals"], summary["files"]
    out.line(f"  discarded since the snapshot: {t['insert']} inserted, {t['update']} updated, {t['delete']} deleted "
             f"row(s); {f['added']} file(s) added, {f['changed']} changed — see `python -m manage.rollback "
             f"discarded {txn}`")
