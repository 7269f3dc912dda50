"""Done when: after a deploy during which users kept writing is rolled back, the plan predicted the loss
before the click, the report lists exactly those writes, and carry-forward re-applies the chosen inserts
so they are visible in the app again. The blog (examples/blog) under gunicorn, a bad deploy that renames
users.name (Flask-Migrate), users writing posts, a sign-up and uploads meanwhile; the Procfile's worker
restores and makes the report in the background; the operator's CLI does the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from rollback.journal import Journal
from tests.app_e2e.deploys import deploy_rename_and_damage_data
from tests.app_e2e.test_app_comes_back import wait_for_standby
from tests.conftest import ROOT
from tests.e2e.helpers import operator_env, wait_for

pytestmark = pytest.mark.slow


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manage.rollback", *args], cwd=ROOT, env=operator_env(env),
                          capture_output=True, text=True, timeout=300)


def test_the_plan_predicts_the_report_lists_and_carry_forward_brings_back(blog, service_env, procfile_worker):
    env = service_env
    procfile_worker(env)
    done = cli(env, "snapshot", "--notes", "before v2", "--json")
    assert done.returncode == 0, done.stderr
    wait_for_standby(env, json.loads(done.stdout)["id"])  # the worker prepares it after the snapshot

    deploy_rename_and_damage_data(blog)  # users.name -> display_name; users.json, an upload damaged, one deleted
    # Meanwhile users keep writing: the ground truth the plan and the report must match.
    with psycopg.connect(blog.conninfo, autocommit=True) as conn:
        new_posts = [conn.execute("insert into posts (user_id, title, body) values (%s, %s, %s) returning id",
                                  (uid, title, "written after the deploy")).fetchone()[0]
                     for uid, title in ((1, "Night bus to Hakodate"), (2, "Rollback day"), (1, "Ferry notes"))]
        conn.execute("update posts set body = 'edited after the deploy' where id = 3")
        conn.execute("delete from posts where id = 5")
        signup = conn.execute("insert into users (email, display_name) values ('dana@example.com', 'Dana') "
                              "returning id").fetchone()[0]
    photo = os.urandom(8192)
    (blog.data_dir / "uploads" / "night-bus.jpg").write_bytes(photo)

    done = cli(env, "plan", "--snapshot", "latest", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [c["subject"] for c in plan["code"]["commits"]] == ["v2: display names"]
    assert [m["revision"] for m in plan["alembic"]["migrations"]] == ["c2e8f0a4d6b3"]
    posts = next(t for t in plan["tables"] if t["table"] == "public.posts")
    assert (posts["rows_now"], posts["rows_snapshot"]) == (5 + 3 - 1, 5)
    assert plan["data"]["first"] == {"added": ["uploads/night-bus.jpg"], "removed": ["uploads/notes/kyoto.txt"],
                                     "changed": ["uploads/avatar-aiko.png", "users.json"]}
    assert plan["path"] == "warm" and plan["space"]["ok"] and plan["space"]["needed_bytes"] == 0

    done = cli(env, "restore", "--snapshot", "latest", "--reason", "display names broke", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    txn = Journal(Path(env["BACKUP_DIR"])).all()[-1]["txn"]

    def report_done():
        result = cli(env, "discarded", txn, "--json")
        return json.loads(result.stdout) if result.returncode == 0 else None
    summary = wait_for(report_done, timeout=60, interval=0.5, what="the worker's discarded-writes report")
    tables = {t["table"]: t for t in summary["tables"]}
    assert {op: tables["public.posts"][op] for op in ("insert", "update", "delete")} == \
        {"insert": 3, "update": 1, "delete": 1}
    lines = _report_lines(env, txn, tables["public.posts"]["file"])
    assert sorted(r["key"]["id"] for r in lines if r["op"] == "insert") == sorted(new_posts)
    assert [r["key"]["id"] for r in lines if r["op"] == "update"] == [3]
    assert [r["key"]["id"] for r in lines if r["op"] == "delete"] == [5]
    users = tables["public.users"]
    assert (users["insert"], users["update"], users["delete"]) == (1, 0, 0)  # compared on id, email, bio
    assert users["columns_only_in_replaced"] == ["display_name"] and users["columns_only_in_restored"] == ["name"]
    files = summary["files"]
    assert files["first"] == {"added": ["uploads/night-bus.jpg"], "removed": ["uploads/notes/kyoto.txt"],
                              "changed": ["uploads/avatar-aiko.png", "users.json"]}

    # The sign-up cannot come back into the restored schema (users.name is NOT NULL): skipped and listed.
    done = cli(env, "carry-forward", txn, "--table", "users", "--table", "posts", "--op", "insert", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["applied"] == 3 and result["skipped"] == 1
    skipped = result["tables"][0]["skipped_rows"][0]
    assert skipped["key"] == {"id": signup} and '"name"' in skipped["reason"], skipped
    assert cli(env, "carry-forward", txn, "--files").returncode == 0

    page = blog.get("/users/1")[1].decode()
    assert "Night bus to Hakodate" in page and "Ferry notes" in page  # visible in the app again
    assert "Rollback day" in blog.get("/")[1].decode()
    assert blog.get("/uploads/night-bus.jpg") == (200, photo)
    with psycopg.connect(blog.conninfo, autocommit=True) as conn:  # the app's next post gets a fresh id
        nxt = conn.execute("insert into posts (user_id, title, body) values (1, 'next', 'x') returning id").fetchone()[0]
    assert nxt == max(new_posts) + 1
    log = (Path(env["LOG_DIR"]) / "rollback.log").read_text()
    assert f"ROLLBACK id={txn} step=discarded status=ok" in log and "action=carry-forward outcome=ok" in log


def _report_lines(env: dict, txn: str, name: str) -> list[dict]:
    path = Path(env["BACKUP_DIR"]) / "journal" / txn / "discarded" / name
    return [json.loads(line) for line in path.read_text().splitlines()]
