"""The plan of a restore: what it would change and throw away, computed without changing anything.

- `code`: the deployed revision, the snapshot's, and the commits in between (those the restore removes);
- `alembic`: the database's revision, the snapshot's, and the migrations in between (downgraded);
- `tables`: per table, rows now vs in the snapshot (exact counts; Postgres' estimate above
  PLAN_EXACT_MAX_ROWS) and the inserts, updates and deletes since — estimates from the cumulative
  counters of `pg_stat_user_tables` recorded at snapshot time (they count rolled-back writes too, and
  are unavailable when the database was replaced or its statistics reset since);
- `data`: the data directory's files added, changed and removed since the snapshot (its listing,
  recorded at snapshot time, against the live tree: size and mtime, then SHA-256 where they differ);
- `path` (`warm` or `cold`), `estimate_sec` (the median duration of the recorded restores of that path)
  and `space` (what the restore needs on the data directory's disk, and what is free there).
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Iterator

from psycopg import sql

from . import migrations_info, pg, standby, tree_index
from .diff.tables import table_inventory
from .diff.tree import FIRST_PATHS, TreeEntry, walk_tree
from .errors import RollbackError
from .fsutil import sha256_file
from .journal import Journal, is_success, total_duration
from .manifest import Manifest
from .proc import output
from .resources.code import strategy_for
from .settings import Settings

PLAN_EXACT_MAX_ROWS = 1_000_000  # above this (Postgres' estimate), a table's row count is the estimate
MAX_COMMITS = 50
HISTORY = 10  # the newest restores of a path its estimate is the median of


def build_plan(settings: Settings, snapshot_ref: str) -> dict:
    """The plan of restoring `snapshot_ref` (an id or 'latest') now; reads only."""
    entry = Manifest.for_settings(settings).resolve(snapshot_ref)
    path, path_detail = _path(settings, entry)
    estimate, basis = estimate_duration(settings, path)
    return {
        "snapshot_id": entry["id"],
        "snapshot_created_at": entry.get("created_at"),
        "code": _code(settings, entry),
        "alembic": _alembic(settings, entry),
        "tables": _tables(settings, entry),
        "data": _data(settings, entry),
        "path": path,
        "path_detail": path_detail,
        "estimate_sec": estimate,
        "estimate_basis": basis,
        "space": _space(settings, entry, path),
    }


# -- code and schema -------------------------------------------------------------------------
def _code(settings: Settings, entry: dict) -> dict:
    target = entry.get("app_revision")
    try:
        current, dirty = strategy_for(settings).current_revision()
    except (RollbackError, OSError) as exc:
        return {"current": None, "target": target, "commits": [], "error": str(exc)}
    out = {"current": current, "dirty": dirty, "target": target, "commits": [], "changes": current != target}
    if settings.code_rollback_strategy != "git" or not target or current == target:
        return out
    try:
        log = output(["git", "-C", str(settings.app_repo_dir), "log", f"--max-count={MAX_COMMITS + 1}",
                      "--format=%H%x09%s", f"{target}..{current}"], timeout=30)
    except RollbackError as exc:
        return dict(out, error=f"cannot list the commits: {exc}")
    commits = [dict(zip(("revision", "subject"), line.split("\t", 1))) for line in log.splitlines() if line]
    return dict(out, commits=commits[:MAX_COMMITS], more_commits=len(commits) > MAX_COMMITS)


def _alembic(settings: Settings, entry: dict) -> dict:
    from alembic.script import ScriptDirectory  # heavy; only a plan needs the revision graph here

    target = entry.get("alembic_revision")
    try:
        current = pg.alembic_revision(settings.database)
    except RollbackError as exc:
        return {"current": None, "target": target, "migrations": [], "error": str(exc)}
    out = {"current": current, "target": target, "migrations": [], "changes": current != target}
    if current == target or current is None:
        return out
    try:
        script = ScriptDirectory.from_config(migrations_info.alembic_config(settings))
        walked = script.iterate_revisions(tuple(current.split(",")), tuple(target.split(",")) if target else "base")
        out["migrations"] = [{"revision": rev.revision, "subject": (rev.doc or "").strip().splitlines()[0]
                              if rev.doc else ""} for rev in walked]
    except Exception as exc:  # an unknown revision, a broken migration file: shown, the plan goes on
        out["error"] = f"cannot walk the migrations from {current} to {target}: {type(exc).__name__}: {exc}"
    return out


# -- tables -----------------------------------------------------------------------------------
def _tables(settings: Settings, entry: dict) -> list[dict]:
    stats = entry.get("stats") or {}
    then = stats.get("tables")
    baseline = stats.get("write_counters") or {}
    with pg.connect(settings.database) as conn:
        inventory = table_inventory(conn)
        counters, why = _counters_since(conn, baseline)
        rows = []
        for (schema, name), info in inventory.items():
            key = f"{schema}.{name}"
            if key == "public.alembic_version":
                continue
            exact = info.estimate < PLAN_EXACT_MAX_ROWS
            now = conn.execute(sql.SQL("select count(*) from {}").format(info.ident)).fetchone()[0] if exact \
                else info.estimate
            row = {"table": key, "rows_now": now, "rows_now_exact": exact,
                   "rows_snapshot": then.get(key) if then is not None else None}
            if then is not None and key not in then:
                row["note"] = "created since the snapshot: the restore drops it"
            row.update(counters.get(key) or {"inserted": None, "updated": None, "deleted": None})
            row["writes_basis"] = why if key in counters else (why if counters == {} else "no counters recorded")
            rows.append(row)
    for key in sorted(set(then or {}) - {r["table"] for r in rows}):
        rows.append({"table": key, "rows_now": None, "rows_snapshot": then[key],
                     "note": "dropped since the snapshot: the restore brings it back"})
    if then is None:
        rows.append({"table": "*", "note": "this snapshot recorded no row counts (taken by an older version)"})
    return rows


def _counters_since(conn, baseline: dict) -> tuple[dict[str, dict], str]:
    """Estimated writes per table since the snapshot from pg_stat_user_tables, and their basis."""
    if not baseline.get("tables"):
        return {}, "unavailable: the snapshot recorded no write counters"
    oid, reset = conn.execute("select d.oid, s.stats_reset from pg_database d left join pg_stat_database s "
                              "on s.datid = d.oid where d.datname = current_database()").fetchone()
    if int(oid) != baseline.get("database_oid") or (str(reset) if reset else None) != baseline.get("stats_reset"):
        return {}, "unavailable: the database was replaced or its statistics reset since the snapshot"
    out = {}
    for schema, name, ins, upd, dele in conn.execute(
            "select schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del from pg_stat_user_tables"):
        key = f"{schema}.{name}"
        old = baseline["tables"].get(key, [0, 0, 0])
        out[key] = {"inserted": max(ins - old[0], 0), "updated": max(upd - old[1], 0),
                    "deleted": max(dele - old[2], 0)}
    return out, "estimate: pg_stat_user_tables counters since the snapshot (rolled-back writes count too)"


# -- data tree --------------------------------------------------------------------------------
def _data(settings: Settings, entry: dict) -> dict:
    listing = settings.backup_dir / entry["id"] / ((entry.get("stats") or {}).get("data_listing") or tree_index.DATA_LISTING)
    counts = {"added": 0, "changed": 0, "removed": 0}
    first: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    live = settings.data_base_dir
    note = None
    if not listing.is_file():
        archive = settings.backup_dir / entry["id"] / entry["artifacts"]["data"]["file"]
        if not archive.is_file():
            return dict(counts, first=first, exact=False,
                        note="this snapshot has neither a listing of the data tree nor its archive here")
        # Not indexed yet (the index runs just after the snapshot), or pulled from the bucket (which keeps
        # only the artifacts): index the archive now, as the background task would.
        summary = tree_index.ensure_index(settings, entry)
        if "unsafe" in summary:
            return dict(counts, first=first, exact=False,
                        note=f"the snapshot's archive holds a member a restore refuses: {summary['unsafe']}")
        note = "the data tree's listing was built from the snapshot's archive now (it had not been indexed yet)"
    if not live.is_dir():
        return dict(counts, first=first, exact=False, note=f"DATA_BASE_DIR {live} is not a directory")

    def count(op: str, entry: TreeEntry) -> None:
        counts[op] += 1
        if len(first[op]) < FIRST_PATHS:
            first[op].append(entry.rel)

    then, now = _listing(listing), walk_tree(live)
    a, b = next(then, None), next(now, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0].parts < b.parts):
            count("removed", a[0])
            a = next(then, None)
        elif a is None or b.parts < a[0].parts:
            count("added", b)
            b = next(now, None)
        else:
            if not _unchanged(live, a, b):
                count("changed", b)
            a, b = next(then, None), next(now, None)
    return dict(counts, first=first, exact=True, **({"note": note} if note else {}))


def _listing(path: Path) -> Iterator[tuple[TreeEntry, str | None]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            rec = json.loads(line)
            kind = "link" if rec["kind"] == "symlink" else "file"
            yield TreeEntry(tuple(rec["path"].split("/")), kind, rec["size"], rec.get("mtime") or 0,
                            rec.get("target")), rec.get("sha256")


def _unchanged(root: Path, then: tuple[TreeEntry, str | None], now: TreeEntry) -> bool:
    old, digest = then
    if old.kind != now.kind or old.size != now.size or old.target != now.target:
        return False
    if old.kind == "link" or old.mtime_ns == now.mtime_ns // 1_000_000_000:
        return True  # the listing has the archive's whole-second mtimes
    return sha256_file(root.joinpath(*now.parts))[0] == digest


# -- path, duration, space --------------------------------------------------------------------
def _path(settings: Settings, entry: dict) -> tuple[str, str]:
    try:
        record, why = standby.usable_standby(settings, entry)
    except RollbackError as exc:
        return "cold", f"the warm standby could not be checked ({exc})"
    if record:
        return "warm", f"warm standby of {entry['id']} (database {record['database']})"
    return "cold", f"cold: pg_restore of the dump and extraction of the archive ({why})"


def restore_path(doc: dict) -> str:
    """Which path a recorded restore took: `warm` when its preflight chose the standby."""
    return "warm" if (doc.get("marks") or {}).get("standby") else "cold"


def estimate_duration(settings: Settings, path: str) -> tuple[float | None, str]:
    """The median duration of the newest successful restores of `path` (else of any path)."""
    done = [d for d in Journal(settings.backup_dir).all() if is_success(d.get("status")) and total_duration(d)]
    for pool, what in (([d for d in done if restore_path(d) == path], f"{path} restores"), (done, "restores")):
        durations = [total_duration(d) for d in pool[-HISTORY:]]
        if durations:
            return round(statistics.median(durations), 1), f"median of the {len(durations)} newest successful {what}"
    return None, "no successful restore recorded yet"


def _space(settings: Settings, entry: dict, path: str) -> dict:
    data_dir = settings.data_base_dir
    probe = data_dir if data_dir.exists() else data_dir.parent
    free = shutil.disk_usage(probe).free if probe.exists() else None
    art = entry["artifacts"]["data"]
    # Cold: the archive is extracted beside the live tree before the swap (10 % headroom, as the
    # preflight checks); warm: the standby tree is already on that disk.
    needed = 0 if path == "warm" else int((art.get("tar_bytes") or art["size"]) * 1.1) + (16 << 20)
    out = {"data_dir": str(probe), "needed_bytes": needed, "free_bytes": free,
           "ok": free is None or free >= needed}
    try:
        with pg.connect(settings.database) as conn:
            live_db = conn.execute("select pg_database_size(current_database())").fetchone()[0]
    except RollbackError:
        live_db = None
    in_place = settings.db_restore_strategy == "in-place"
    # Swap keeps the replaced database (a rename) and restores a new one beside it; in-place copies
    # the live one first. Either way the database server needs about one more database.
    out["database_bytes_estimate"] = live_db if in_place or path == "cold" else 0
    out["database_note"] = ("on the database server (not checked from here): about the size of the "
                            + ("live database (its pre-restore copy)" if in_place else "restored database"))
    return out

