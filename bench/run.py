"""Benchmark: the naive runbook path against this product, side by side on the same data.

    python -m bench.run --sizes 0.25,1,2 --reps 2 --write docs/performance.md

For each size (GB of database + the same of data dir) and repetition, in the same run:
  naive: pg_dump -Fc + tar czf (snapshot); pg_restore --clean + tar xzf (restore)
  ours, as the operator sees it: `python -m manage.rollback snapshot`, then (once the warm standby the
  worker prepares after it is ready) `restore --snapshot ID --yes` twice: warm (the standby), then cold
  (the standby was consumed), each through a real `celery -A tasks worker` (bench/operator.py), timed
  from start to exit; next to it the steps' own times (the worker's task time for the snapshot, the
  journal's step durations for the restores), bytes on disk, and the peak RSS of every worker process
  and of the CLI. Medians are printed and written, never asserted.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.datagen import create_data_dir, create_database
from bench.operator import Worker, cli, journal, wait_for

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

CHILD = r"""
import json, sys, time
from rollback.settings import Settings
s = Settings.from_env()
t0 = time.monotonic()
if sys.argv[1] == "snapshot":
    from rollback.snapshot import create_snapshot
    entry = create_snapshot(s, notes="bench")
    out = {"id": entry["id"], "bytes": sum(a["size"] for a in entry["artifacts"].values())}
elif sys.argv[1] == "standby":
    from rollback.standby import prepare_standby
    out = {"snapshot_id": prepare_standby(s, sys.argv[2])["snapshot_id"]}
else:
    from rollback.restore import run_restore_local
    doc = run_restore_local(s, sys.argv[2], reason="bench")
    out = {"steps": {k: v.get("duration_sec") for k, v in doc["steps"].items()}, "status": doc["status"]}
out["seconds"] = time.monotonic() - t0
out["max_rss_mb"] = int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]) / 1024
print(json.dumps(out))
"""

MIGRATION = '''"""bench schema (created by bench/datagen.py)

Revision ID: bench_0001
Revises:
"""
revision = "bench_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _settle() -> None:
    """Flush dirty pages left by the previous phase so it is not billed to the next one."""
    os.sync()
    time.sleep(1)


def _timed(argv: list[str], settle: bool = True, **kw) -> float:
    if settle:
        _settle()
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.monotonic() - t0


def _app_repo(path: Path) -> None:
    (path / "migrations" / "versions").mkdir(parents=True)
    shutil.copy(ROOT / "alembic.ini", path / "alembic.ini")
    shutil.copy(ROOT / "migrations" / "env.py", path / "migrations" / "env.py")
    shutil.copy(ROOT / "migrations" / "script.py.mako", path / "migrations" / "script.py.mako")
    (path / "migrations" / "versions" / "bench_0001.py").write_text(MIGRATION)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=b@x", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)


def _cleanup_side_copies(db: str, data: Path) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for (name,) in conn.execute("select datname from pg_database where datname like %s", (db + "\\_\\_%",)):
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    for side in data.parent.glob(f"{data.name}.pre-*"):
        shutil.rmtree(side)
    for side in data.parent.glob(f".{data.name}.rollback-standby*"):
        shutil.rmtree(side)


def bench_environment(db: str, work: Path) -> tuple[http.server.ThreadingHTTPServer, dict, dict]:
    """A ready /readyz server, the product's environment for `db` and `work`, and libpq's for the naive path."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data, backup, repo = work / "data", work / "backup", work / "app"
    env = dict(os.environ, DATABASE_URL=ADMIN_URL.rsplit("/", 1)[0] + f"/{db}", DATA_BASE_DIR=str(data),
               BACKUP_DIR=str(backup), APP_REPO_DIR=str(repo), ALEMBIC_CONFIG=str(repo / "alembic.ini"),
               LOG_DIR=str(work / "logs"), READYZ_URL=f"http://127.0.0.1:{server.server_port}/readyz",
               ROLLBACK_READY_INTERVAL_SEC="0.2", PYTHONPATH=str(ROOT))
    pg_env = dict(os.environ, PGHOST="127.0.0.1", PGUSER="postgres", PGDATABASE=db)
    return server, env, pg_env


def run_size(size_gb: float, reps: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    db = f"bench_{str(size_gb).replace('.', '_')}"
    data, backup, repo = work / "data", work / "backup", work / "app"
    for p in (data, backup, repo, work / "naive"):
        shutil.rmtree(p, ignore_errors=True)
    print(f"[{size_gb} GB] generating database and data dir ...", flush=True)
    db_bytes = create_database(ADMIN_URL, db, size_gb)
    data_bytes = create_data_dir(data, size_gb)
    _app_repo(repo)
    server, env, pg_env = bench_environment(db, work)
    worker = Worker(dict(env, ROLLBACK_STANDBY="true"), work / "worker.log")
    env = worker.env
    rows = []
    try:
        for rep in range(reps):
            print(f"[{size_gb} GB] repetition {rep + 1}/{reps}", flush=True)
            r = _naive(work / "naive", data, db, pg_env)
            r.update(_operator(worker, env, backup, db, data))
            print(f"[{size_gb} GB] {json.dumps({k: round(v, 2) for k, v in r.items()})}", flush=True)
            rows.append(r)
    finally:
        worker.stop()
        server.shutdown()
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    med["size_gb"], med["db_bytes"], med["data_bytes"], med["reps"] = size_gb, db_bytes, data_bytes, reps
    _drop(db)
    shutil.rmtree(work, ignore_errors=True)
    return med


def _naive(naive_dir: Path, data: Path, db: str, pg_env: dict) -> dict:
    """The runbook's commands, as a script would run them."""
    shutil.rmtree(naive_dir, ignore_errors=True)
    naive_dir.mkdir()
    r = {}
    r["naive_dump"] = _timed(["pg_dump", "-Fc", "-f", str(naive_dir / "db.dump")], env=pg_env)
    # Back to back, as a script would run them (ours also runs its steps without a pause).
    r["naive_tar_c"] = _timed(["tar", "czf", str(naive_dir / "data.tar.gz"), "-C", str(data), "."], settle=False)
    r["naive_bytes"] = sum(f.stat().st_size for f in naive_dir.iterdir())
    r["naive_pg_restore"] = _timed(["pg_restore", "--clean", "--if-exists", "-d", db, str(naive_dir / "db.dump")],
                                   env=pg_env)
    (naive_dir / "x").mkdir()
    r["naive_tar_x"] = _timed(["tar", "xzf", str(naive_dir / "data.tar.gz"), "-C", str(naive_dir / "x")], settle=False)
    shutil.rmtree(naive_dir)
    return r


STEPS = ("preflight", "db", "data", "code", "readyz")


def _operator(worker: Worker, env: dict, backup: Path, db: str, data: Path) -> dict:
    """Snapshot, warm restore (once the standby is ready) and cold restore of the same snapshot, each
    through the CLI and the worker; the steps' own times from the worker log and the journals."""
    r = {}
    _settle()
    mark = worker.log_size()
    snap = cli(env, "snapshot", "--notes", "bench", "--json")
    entry = json.loads(snap["stdout"][snap["stdout"].index("{"):])
    r["cli_snapshot"], r["task_snapshot"] = snap["seconds"], worker.task_seconds("rollback.snapshot", mark)[-1]
    r["ours_bytes"] = sum(a["size"] for a in entry["artifacts"].values())
    r["cli_rss_mb"] = snap["max_rss_mb"]
    wait_for(lambda: worker.task_seconds("rollback.standby.prepare", mark), 1800, "the standby", poll=0.2)
    r["standby_prepare"] = worker.task_seconds("rollback.standby.prepare", mark)[-1]
    wait_for(lambda: worker.task_seconds("rollback.snapshot.index", mark), 600, "the archive's index", poll=0.2)
    r["index"] = worker.task_seconds("rollback.snapshot.index", mark)[-1]
    worker.sample_rss()
    for kind in ("warm", "cold"):
        _settle()
        mark = worker.log_size()
        done = cli(env, "restore", "--snapshot", entry["id"], "--reason", f"bench {kind}", "--yes")
        txn = re.search(r"restore (txn-\S+)", done["stderr"] + done["stdout"])[1]
        doc = journal(backup, txn)
        assert doc["status"] == "succeeded", doc
        assert bool(doc["marks"].get("standby")) == (kind == "warm"), doc["marks"]
        r[f"cli_{kind}"] = done["seconds"]
        for step in STEPS:
            r[f"{kind}_{step}"] = doc["steps"][step].get("duration_sec") or 0.0
        r["cli_rss_mb"] = max(r["cli_rss_mb"], done["max_rss_mb"])
        # The artifacts' check a warm restore leaves to a background task, and any other follow-up task.
        wait_for(worker.idle, 600, "the worker's follow-up tasks", poll=0.2)
        worker.sample_rss()
        _cleanup_side_copies(db, data)
    r["worker_rss_mb"] = worker.peak_rss_mb()
    return r


def _child(env: dict, *args: str) -> dict:
    _settle()
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=ROOT, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _drop(db: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def table(results: list[dict]) -> str:
    def mb(n):
        return f"{n / (1 << 20):,.0f} MiB"

    def steps(m, kind, fmt):
        return " / ".join(format(m[f"{kind}_{s}"], fmt) for s in ("preflight", "db", "data", "code"))

    lines = [
        "| size (db + data) | naive snapshot | ours snapshot: CLI (task) | snapshot naive/ours "
        "| naive restore | ours cold restore: CLI (preflight / db / data / code) | cold naive/ours "
        "| ours warm restore: CLI (preflight / db / data / code) | index / standby prep (background) "
        "| bytes naive / ours | peak RSS worker / CLI |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        naive_snap = m["naive_dump"] + m["naive_tar_c"]
        naive_restore = m["naive_pg_restore"] + m["naive_tar_x"]
        lines.append(
            f"| {mb(m['db_bytes'])} + {mb(m['data_bytes'])} "
            f"| {naive_snap:.1f} s ({m['naive_dump']:.1f} + {m['naive_tar_c']:.1f}) "
            f"| {m['cli_snapshot']:.1f} s ({m['task_snapshot']:.1f}) | {naive_snap / m['cli_snapshot']:.1f}× "
            f"| {naive_restore:.1f} s ({m['naive_pg_restore']:.1f} + {m['naive_tar_x']:.1f}) "
            f"| {m['cli_cold']:.1f} s ({steps(m, 'cold', '.1f')}) | {naive_restore / m['cli_cold']:.2f}× "
            f"| {m['cli_warm']:.2f} s ({steps(m, 'warm', '.2f')}) | {m['index']:.1f} / {m['standby_prepare']:.1f} s "
            f"| {mb(m['naive_bytes'])} / {mb(m['ours_bytes'])} "
            f"| {m['worker_rss_mb']:.0f} / {m['cli_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def write_report(path: Path, results: list[dict], command: str) -> None:
    body = (f"{START}\nCommand: `{command}` — {time.strftime('%Y-%m-%d', time.gmtime())}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, medians of {results[0]['reps']} run(s).\n\n"
            f"{table(results)}\n{END}")
    text = path.read_text() if path.exists() else f"# Performance\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    path.write_text(head + body + rest.split(END, 1)[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.25,1,2", help="comma list of GB (database and data dir each)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp/rollback-bench")
    p.add_argument("--write", help="markdown file to put the table into (between bench markers)")
    p.add_argument("--json", help="also write the raw medians here")
    args = p.parse_args(argv)
    results = [run_size(float(s), args.reps, Path(args.workdir) / f"s{s}") for s in args.sizes.split(",")]
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write:
        write_report(Path(args.write), results, "python -m bench.run " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
