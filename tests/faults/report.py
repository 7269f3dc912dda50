"""Turn the suite's figures (FAULT_REPORT JSON lines) into the table of docs/reliability.md.

    python -m tests.faults.report REPORT.jsonl docs/reliability.md --command "..." --summary "..."

Only the part between the two markers is replaced; the rest of the document is prose kept by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def load(path: Path) -> list[dict]:
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(cases, key=lambda c: (int(c["item"]) if c["item"].isdigit() else 99, c["name"]))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(cases: list[dict], command: str, summary: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    total_runs = sum(c["runs"] for c in cases)
    total_lost = sum(c["data_lost"] for c in cases)
    lines = [
        START,
        f"Measured {when} on {os.cpu_count()} cores ({platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}), by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"pytest: {summary or 'n/a'}. {len(cases)} cases, {total_runs} runs, data lost in total: **{total_lost}**.",
        "",
        "| # | case | runs | outcome | data lost | time |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for c in cases:
        outcome = ", ".join(f"{k}: {v}" for k, v in sorted(c["outcomes"].items(), key=lambda kv: (-kv[1], kv[0])))
        notes = "; ".join(c.get("notes") or [])
        if notes:
            outcome += f" — *{notes}*"
        lines.append(f"| {c['item']} | {_cell(c['name'])} | {c['runs']} | {_cell(outcome) or '-'} | {c['data_lost']} | "
                     f"{c['seconds']:.0f} s |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("report", type=Path)
    p.add_argument("doc", type=Path)
    p.add_argument("--command", required=True)
    p.add_argument("--summary", default="")
    args = p.parse_args(argv)
    cases = load(args.report) if args.report.exists() else []
    if not cases:
        print(f"no figures in {args.report}", file=sys.stderr)
        return 1
    doc = args.doc.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        print(f"{args.doc} lacks the {START} / {END} markers", file=sys.stderr)
        return 1
    head, rest = doc.split(START, 1)
    _old, tail = rest.split(END, 1)
    args.doc.write_text(head + table(cases, args.command, args.summary) + tail, encoding="utf-8")
    print(f"{args.doc}: table of {len(cases)} cases written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
