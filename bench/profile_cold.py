"""Where the cold restore spends its time, against the naive path made durable, on one generated size.

    python -m bench.profile_cold --size 1 [--workdir /var/tmp/benchprof]

- naive: `pg_restore --clean` then `tar xzf` (as bench.run times them), then the `sync` they leave out:
  the naive restore is not on disk when it "ends"; ours is (one `syncfs` after the extraction).
- ours: a cold `restore --local` in a child process sampled by py-spy (`--idle`, so waiting for
  pg_restore / tar counts), its samples grouped by the innermost known function of the product; and
  Postgres' own log (`log_min_duration_statement`) for the statements pg_restore sent, grouped by kind.
Figures are printed (and written as JSON with --json), never asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.datagen import create_data_dir, create_database
from bench.run import ADMIN_URL, CHILD, ROOT, _app_repo, _child, _drop, _settle, bench_environment

PG_LOG = Path(os.environ.get("BENCH_PG_LOG", "/var/log/postgresql/postgresql-15-main.log"))
RATE = 50  # samples per second
# Innermost match wins: (function name, or a file when it names one, of a py-spy frame; label).
CATEGORIES = (
    ("syncfs", "syncfs (data + the database's dirty pages on the same filesystem)"),
    ("fsync_dir", "fsync of folders"),
    ("_extract_with_tar", "extraction: GNU tar fed by us (includes its wait)"),
    ("_scan", "extraction: our member scan (Python)"),
    ("measure_archive", "preflight: decompress + sha256 of the archive"),
    ("sha256_file", "preflight: sha256 of the dump"),
    ("list_dump", "preflight: pg_restore --list"),
    ("_check_room", "preflight: disk room"),
    ("restore_into_new", "db: pg_restore -j into a fresh database (waiting for it)"),
    ("swap_databases", "db: rename swap"),
    ("exchange_with_live", "data: rename swap"),
    ("restore_code", "code: git reset + sync"),
    ("rollback/journal.py", "journal writes"),
    ("run_step", "other (inside a step)"),
)


def _category(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for pattern, label in CATEGORIES:
            if (pattern in frame) if ".py" in pattern else frame.split(" ")[0] == pattern:
                return label
    return "start-up and outside the steps"


def profile_summary(raw: Path) -> dict[str, float]:
    seconds: collections.Counter = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            seconds[_category(stack)] += int(count) / RATE
    return dict(seconds.most_common())


_DURATION = re.compile(r"duration: (?P<ms>[\d.]+) ms\s+statement: (?P<sql>.*)")


def pg_statement_summary(text: str) -> dict[str, float]:
    seconds: collections.Counter = collections.Counter()
    for m in _DURATION.finditer(text):
        sql = m["sql"].strip().upper()
        kind = ("CREATE INDEX" if sql.startswith("CREATE INDEX") or sql.startswith("CREATE UNIQUE INDEX") else
                "ADD CONSTRAINT (PK/FK, index or check)" if "ADD CONSTRAINT" in sql else
                "COPY (rows)" if sql.startswith("COPY") else sql.split(" ")[0])
        seconds[kind] += float(m["ms"]) / 1000
    return {k: round(v, 1) for k, v in seconds.most_common()}


def _timed(argv: list[str], **kw) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)
    return round(time.monotonic() - t0, 1)


def _pg_logging(on: bool) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        if on:
            conn.execute("ALTER SYSTEM SET log_min_duration_statement = 200")
        else:
            conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
        conn.execute("SELECT pg_reload_conf()")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1.0, help="GB of database and the same of data dir")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/benchprof"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    work, db = args.workdir, "bench_profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, backup, repo, naive = work / "data", work / "backup", work / "app", work / "naive"
    print(f"[{args.size} GB] generating ...", flush=True)
    create_database(ADMIN_URL, db, args.size)
    create_data_dir(data, args.size)
    _app_repo(repo)
    server, env, pg_env = bench_environment(db, work)
    result: dict = {"size_gb": args.size}
    try:
        naive.mkdir()
        subprocess.run(["pg_dump", "-Fc", "-f", str(naive / "db.dump")], env=pg_env, check=True)
        subprocess.run(["tar", "czf", str(naive / "data.tar.gz"), "-C", str(data), "."], check=True)
        (naive / "x").mkdir()
        _settle()
        result["naive"] = {
            "pg_restore --clean": _timed(["pg_restore", "--clean", "--if-exists", "-d", db, str(naive / "db.dump")],
                                         env=pg_env),
            "tar xzf": _timed(["tar", "xzf", str(naive / "data.tar.gz"), "-C", str(naive / "x")]),
            "sync (what it leaves unflushed)": _timed(["sync"]),
        }
        shutil.rmtree(naive)
        print("naive:", result["naive"], flush=True)

        snap = _child(env, "snapshot")
        _settle()
        raw = work / "pyspy.txt"
        log_start = PG_LOG.stat().st_size if PG_LOG.exists() else 0
        _pg_logging(True)
        try:
            with tempfile.NamedTemporaryFile("w+") as out:
                t0 = time.monotonic()
                subprocess.run(["py-spy", "record", "--idle", "--rate", str(RATE), "--format", "raw", "-o", str(raw),
                                "--", sys.executable, "-c", CHILD, "restore", snap["id"]],
                               env=env, cwd=ROOT, check=True, stdout=out, stderr=subprocess.DEVNULL)
                wall = time.monotonic() - t0
                out.seek(0)
                # py-spy adds its own summary lines to stdout: take the child's JSON line
                restore = json.loads(next(line for line in reversed(out.read().splitlines()) if line.startswith("{")))
        finally:
            _pg_logging(False)
        assert restore["status"] == "succeeded", restore
        result["ours_steps"] = {k: round(v, 1) for k, v in restore["steps"].items() if v is not None}
        result["ours_wall_under_pyspy"] = round(wall, 1)
        result["ours_profile_seconds"] = {k: round(v, 1) for k, v in profile_summary(raw).items()}
        if PG_LOG.exists():
            with open(PG_LOG, errors="replace") as f:
                f.seek(log_start)
                result["pg_statements_seconds"] = pg_statement_summary(f.read())
        print(json.dumps(result, indent=2), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        server.shutdown()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for (name,) in conn.execute("select datname from pg_database where datname like %s", (db + "\\_\\_%",)):
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        _drop(db)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
