"""`python -m manage.rollback drill [--snapshot ID|latest] [--json]`: restore a snapshot beside production,
check it, time it, record the result with the snapshot (in this process; see rollback/drill.py).

Exit status: 0 the drill passed, 1 it failed (and the webhook was alerted), 2 bad input, 3 a restore or
snapshot runs (refused, or the drill was abandoned for it; nothing is recorded then).
"""

from __future__ import annotations

import json

from rollback.ids import validate_snapshot_id
from rollback.settings import Settings

from .exit_codes import EXIT_FAILED, EXIT_OK

JSON_KEYS = ("snapshot_id", "ok", "rto_sec", "phases", "error", "at", "checks")


def proven(record: dict | None) -> str:
    """The `list` column: when the snapshot last proved restorable (or failed to)."""
    if not record:
        return "never drilled"
    when = str(record.get("at", "?")).replace("T", " ")[:16]
    if record.get("ok"):
        return f"yes {when} ({record.get('rto_sec') or 0:.1f} s)"
    return f"NO (drill failed {when})"


def add_parser(sub) -> None:
    s = sub.add_parser("drill", help="restore a snapshot beside production (scratch database and tree), check "
                                     "it as /readyz would, time it, record the result; touches nothing live")
    s.add_argument("--snapshot", default="latest", help="a snapshot id or 'latest' (default)")
    s.add_argument("--json", action="store_true",
                   help="print {snapshot_id, ok, rto_sec, phases, error, at, checks} as one JSON object")


def run(settings: Settings, args, out) -> int:
    from rollback.drill import run_drill  # SQLAlchemy (the /readyz probe) loads only for a drill

    result = run_drill(settings, validate_snapshot_id(args.snapshot, allow_latest=True), progress=out)
    if args.json:
        print(json.dumps({k: result[k] for k in JSON_KEYS}, indent=2, ensure_ascii=False))
        return EXIT_OK if result["ok"] else EXIT_FAILED
    verdict = f"PROVEN RESTORABLE in {result['rto_sec']:.1f} s" if result["ok"] else "FAILED"
    print(f"drill of snapshot {result['snapshot_id']}: {verdict}")
    for name, sec in result["phases"].items():
        print(f"  {name:<9} {sec:8.2f} s")
    for check in result["checks"]:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[check["ok"]]
        print(f"  {mark} {check['name']}: {check['detail'].removeprefix('skipped: ')}")
    if not result["ok"]:
        print(f"error: {result['error']}")
        print("the webhook was alerted" if settings.notify_webhook_url else
              "no webhook configured (ROLLBACK_NOTIFY_WEBHOOK_URL): nobody was alerted")
    return EXIT_OK if result["ok"] else EXIT_FAILED
