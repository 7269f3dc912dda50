"""`python -m manage.rollback plan --snapshot ID|latest [--json]`: what a restore of that snapshot would
change and throw away, computed in this process without changing anything (rollback/plan.py)."""

from __future__ import annotations

import json

from rollback.ids import validate_snapshot_id
from rollback.settings import Settings

from .exit_codes import EXIT_OK


def add_parser(sub) -> None:
    s = sub.add_parser("plan", help="show what a restore would change and discard (code, migrations, rows, "
                                    "files, path, duration, space); changes nothing")
    s.add_argument("--snapshot", required=True, help="a snapshot id or 'latest'")
    s.add_argument("--json", action="store_true", help="print the plan as one JSON object (keys code, alembic, "
                                                       "tables, data, path, estimate_sec, space)")


def run(settings: Settings, args, out) -> int:
    from rollback.plan import build_plan  # psycopg: loaded by the command, not by `rollback --help`

    plan = build_plan(settings, validate_snapshot_id(args.snapshot, allow_latest=True))
    if args.json:
        print(json.dumps(plan, indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    for line in format_plan(plan):
        print(line)
    return EXIT_OK


def format_plan(plan: dict) -> list[str]:
    lines = [f"plan: restore snapshot {plan['snapshot_id']} (taken {plan['snapshot_created_at']}); nothing was changed"]
    code = plan["code"]
    lines.append(f"code     {_short(code.get('current'))} -> {_short(code.get('target'))}: "
                 + (f"{len(code['commits'])}{'+' if code.get('more_commits') else ''} commit(s) removed"
                    if code.get("changes") else "unchanged") + (f" ({code['error']})" if code.get("error") else ""))
    lines += [f"           {_short(c['revision'])} {c['subject']}" for c in code["commits"]]
    alembic = plan["alembic"]
    lines.append(f"alembic  {alembic.get('current') or '(empty)'} -> {alembic.get('target') or '(empty)'}: "
                 + (f"{len(alembic['migrations'])} migration(s) downgraded" if alembic.get("changes") else "unchanged")
                 + (f" ({alembic['error']})" if alembic.get("error") else ""))
    lines += [f"           {m['revision']}  {m['subject']}" for m in alembic["migrations"]]
    lines.append("tables   rows now / in the snapshot; writes since the snapshot (" +
                 next((t["writes_basis"] for t in plan["tables"] if t.get("writes_basis")), "none") + ")")
    for t in plan["tables"]:
        if t["table"] == "*":
            lines.append(f"  {t['note']}")
            continue
        writes = "" if t.get("inserted") is None else \
            f"  ~{t['inserted']} inserted, ~{t['updated']} updated, ~{t['deleted']} deleted"
        now = "-" if t.get("rows_now") is None else f"{'' if t.get('rows_now_exact', True) else '~'}{t['rows_now']}"
        then = "-" if t.get("rows_snapshot") is None else t["rows_snapshot"]
        lines.append(f"  {t['table']:<32} {now:>10} / {then!s:<10}{writes}" + (f"  ({t['note']})" if t.get("note") else ""))
    data = plan["data"]
    lines.append(f"data     since the snapshot: {data['added']} added, {data['changed']} changed, {data['removed']} "
                 f"removed" + (f" ({data['note']})" if data.get("note") else ""))
    for op in ("added", "changed", "removed"):
        if data["first"][op]:
            lines.append(f"  {op}: " + ", ".join(data["first"][op]) + (" ..." if data[op] > len(data["first"][op]) else ""))
    lines.append(f"path     {plan['path']}: {plan['path_detail']}")
    estimate = "unknown" if plan["estimate_sec"] is None else f"{plan['estimate_sec']:.1f} s"
    lines.append(f"estimate {estimate} ({plan['estimate_basis']})")
    space = plan["space"]
    free = "unknown" if space["free_bytes"] is None else f"{space['free_bytes'] >> 20} MiB free"
    lines.append(f"space    {space['needed_bytes'] >> 20} MiB needed on {space['data_dir']}, {free}: "
                 f"{'ok' if space['ok'] else 'NOT ENOUGH'}; database: {space['database_note']}")
    return lines


def _short(revision: str | None) -> str:
    return (revision or "-")[:12]
