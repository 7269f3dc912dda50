"""Measure a restore drill's RTO on a dataset of a chosen size (the figures in docs/monitoring.md):

    python -m tests.drill.measure_rto --rows 500000 --data-mb 100

Creates a scratch database (the test app's migrations + a `bulk` table of --rows rows of ~300 bytes) and a
data tree (--data-mb of incompressible files plus the test app's), takes a snapshot, runs one drill, prints
its phases as JSON, and removes everything. Needs the same local Postgres as the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from rollback.drill import run_drill
from rollback.settings import Settings
from rollback.snapshot import create_snapshot
from tests import state

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--data-mb", type=int, default=100)
    args = p.parse_args()
    name = f"rbmeasure_{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="drill-rto-"))
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        repo = tmp / "app"
        repo.mkdir()
        shutil.copy(ROOT / "alembic.ini", repo / "alembic.ini")
        shutil.copytree(ROOT / "migrations", repo / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
        for argv in (["init", "-q"], ["add", "-A"], ["-c", "user.email=m@x", "-c", "user.name=m", "commit", "-qm", "v1"]):
            subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True)
        data = tmp / "var-data"
        state.populate_data_dir(data)
        for i in range(args.data_mb):
            (data / "uploads" / f"blob-{i:04d}.bin").write_bytes(os.urandom(1 << 20))
        settings = Settings.from_env({
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}", "DATA_BASE_DIR": str(data),
            "BACKUP_DIR": str(tmp / "backup"), "APP_REPO_DIR": str(repo), "LOG_DIR": str(tmp / "logs"),
            "READYZ_TABLES": "users:10,trips:1"})
        state.migrate(settings, "head")
        state.seed_rows(settings)
        with state.connect(settings) as conn:
            conn.execute("create table bulk (id bigint primary key, payload text)")
            conn.execute("insert into bulk select g, repeat(md5(g::text), 8) from generate_series(1, %s) g", (args.rows,))
        entry = create_snapshot(settings)
        result = run_drill(settings, entry["id"])
        print(json.dumps({"rows": args.rows, "data_mb": args.data_mb, "restore_jobs": settings.restore_jobs,
                          "dump_bytes": entry["artifacts"]["db"]["size"], "archive_bytes": entry["artifacts"]["data"]["size"],
                          **{k: result[k] for k in ("ok", "rto_sec", "phases", "error")}}, indent=2))
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for (db,) in conn.execute("select datname from pg_database where datname like %s", (name + "%",)).fetchall():
                conn.execute(f'drop database if exists "{db}" with (force)')
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
