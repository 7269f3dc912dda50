"""Peak memory per operation: each of the worker's jobs run alone in a fresh process on generated data,
so a peak RSS can be pinned on the job that causes it.

    python -m bench.memory --size 2 --workdir /var/tmp/rollback-bench-mem

Prints one line per job: its peak RSS (VmHWM of the process, imports included) and its time.
"import" is the baseline every worker process pays: `import tasks` (the Celery app and every task).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.datagen import create_data_dir, create_database
from bench.run import ADMIN_URL, ROOT, _app_repo, _cleanup_side_copies, _drop, bench_environment

CHILD = r"""
import json, sys, time
job, args = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
import tasks  # what every worker process has loaded before its first task
from rollback.settings import Settings
s = Settings.from_env()
out = {}
if job == "snapshot":
    from rollback.snapshot import create_snapshot
    out["id"] = create_snapshot(s, notes="memory")["id"]
elif job == "index":
    from rollback.verify import index_after_snapshot
    out["indexed"] = index_after_snapshot(s, args[0])["indexed"]
elif job == "standby":
    from rollback.standby import prepare_standby
    prepare_standby(s, args[0])
elif job in ("restore-warm", "restore-cold"):
    from rollback.restore import run_restore_local
    doc = run_restore_local(s, args[0], reason=job)
    assert doc["status"] == "succeeded", doc
    out["txn"] = doc["txn"]
elif job == "discarded":
    from rollback.discarded import build_report
    build_report(s, args[0])
elif job == "drill":
    from rollback.drill import run_drill
    out["ok"] = run_drill(s, args[0])["ok"]
elif job == "verify":
    from rollback.verify import verify_snapshot
    verify_snapshot(s, args[0])
out["seconds"] = round(time.monotonic() - t0, 1)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so it would report the parent's peak.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
out["max_rss_mb"] = round(int(hwm.split()[1]) / 1024, 1)
print(json.dumps(out))
"""


def _job(env: dict, job: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, job, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{job} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{job:<14} peak RSS {out['max_rss_mb']:>7.1f} MB   {out['seconds']:>6.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=1.0, help="GB of database and the same of data dir")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/rollback-bench-mem"))
    args = parser.parse_args(argv)
    work, db = args.workdir, f"bench_mem_{str(args.size).replace('.', '_')}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"generating {args.size} GB of database and {args.size} GB of data dir ...", flush=True)
    create_database(ADMIN_URL, db, args.size)
    create_data_dir(work / "data", args.size)
    _app_repo(work / "app")
    server, env, _pg_env = bench_environment(db, work)
    env = dict(env, ROLLBACK_STANDBY="false", CELERY_BROKER_URL="redis://127.0.0.1:6379/15",
               CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/15")
    results = {}
    try:
        results["import"] = _job(env, "import")
        snap = results["snapshot"] = _job(env, "snapshot")
        results["index"] = _job(env, "index", snap["id"])
        results["verify"] = _job(env, "verify", snap["id"])
        results["standby"] = _job(env, "standby", snap["id"])
        results["restore-warm"] = _job(env, "restore-warm", snap["id"])
        _cleanup_side_copies(db, work / "data")
        cold = results["restore-cold"] = _job(env, "restore-cold", snap["id"])
        results["discarded"] = _job(env, "discarded", cold["txn"])
        results["drill"] = _job(env, "drill", snap["id"])
    finally:
        server.shutdown()
        _cleanup_side_copies(db, work / "data")
        _drop(db)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v["max_rss_mb"] for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
