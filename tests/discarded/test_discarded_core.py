"""What a rollback throws away, end to end in the core: a snapshot; a bad deploy that changes the schema
(a column, a table, an index); users who keep writing (inserts, updates, deletes, uploads) recorded as
the ground truth; the plan, before, predicts the loss; the restore; the report lists exactly those
writes; carry-forward re-applies the chosen inserts (skipping a key the app reused after the restore)
and advances the sequence. Real Postgres, git, tar."""

from __future__ import annotations

import json
import stat
import time

import pytest

from rollback import carry_forward, discarded
from rollback.errors import RollbackError
from rollback.plan import build_plan
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from rollback.verify import index_after_snapshot
from tests import state
from tests.discarded.writes import GroundTruth, keep_writing


@pytest.mark.parametrize("strategy", ["swap", "in-place"])
def test_plan_report_and_carry_forward(settings, strategy):
    settings = settings.with_overrides(db_restore_strategy=strategy)  # in-place: the report reads its pre-copy
    snap = create_snapshot(settings, notes="before the deploy")
    listing = settings.backup_dir / snap["id"] / "data-listing.jsonl"
    assert not listing.exists()  # written by the index that follows the snapshot (the worker's task)
    assert index_after_snapshot(settings, snap["id"])["indexed"]
    assert listing.is_file() and stat.S_IMODE(listing.stat().st_mode) == 0o600
    state.bad_deploy(settings, settings.app_repo_dir)  # nickname column, audit_events table, its own writes
    truth = GroundTruth.of_bad_deploy()
    keep_writing(settings, truth)

    _wait_for_write_counters(settings, truth)
    plan = build_plan(settings, "latest")
    assert set(plan) >= {"code", "alembic", "tables", "data", "path", "estimate_sec", "space"}
    assert plan["code"]["target"] == snap["app_revision"] and [c["subject"] for c in plan["code"]["commits"]] == ["bad deploy"]
    assert plan["alembic"] == dict(plan["alembic"], current="0003_bad_deploy", target="0002_trips")
    assert [m["revision"] for m in plan["alembic"]["migrations"]] == ["0003_bad_deploy"]
    tables = {t["table"]: t for t in plan["tables"]}
    assert tables["public.users"]["rows_snapshot"] == 50
    assert tables["public.users"]["rows_now"] == 50 + len(truth.inserted["users"]) - len(truth.deleted["users"])
    assert "created since the snapshot" in tables["public.audit_events"]["note"]
    for t in ("users", "trips"):  # estimates from pg_stat counters: every recorded write is in them
        row = tables[f"public.{t}"]
        assert row["inserted"] >= len(truth.inserted[t]) and row["deleted"] >= len(truth.deleted[t]), row
    assert tables["public.users"]["updated"] >= len(truth.updated["users"])
    assert sorted(plan["data"]["first"]["added"]) == sorted(truth.files_added)  # added since = the restore removes
    assert sorted(plan["data"]["first"]["removed"]) == sorted(truth.files_removed)
    assert sorted(plan["data"]["first"]["changed"]) == sorted(truth.files_changed)
    assert plan["path"] == "cold" and plan["space"]["ok"] and plan["estimate_sec"] is None
    assert state.alembic_version(settings) == "0003_bad_deploy"  # the plan changed nothing
    # A snapshot without its listing (pulled from the bucket, or older): the plan lists the archive once.
    listing.unlink()
    rebuilt = build_plan(settings, "latest")["data"]
    assert "built from the snapshot's archive" in rebuilt.pop("note")
    assert rebuilt == plan["data"] and listing.is_file()

    doc = run_restore_local(settings, snap["id"], reason="bad deploy")
    assert doc["status"] == "succeeded", doc
    assert doc["marks"]["db_strategy"] == strategy and doc["marks"]["db_restored_xid"]
    assert discarded.load_summary(settings, doc["txn"]) is None
    # The restored app goes on before the report runs: its new users take the ids that discarded inserts
    # had. They are not writes the restore discarded; the discarded rows with those keys are flagged.
    with state.connect(settings) as conn:
        reused = [conn.execute("insert into users (email, name) values (%s, 'After') returning id",
                               (f"after{i}@example.com",)).fetchone()[0] for i in range(2)]
    assert reused == truth.inserted["users"][:2]
    summary = discarded.build_report(settings, doc["txn"])
    assert summary["status"] == "done"
    # Row data and file lists: readable by the service's user only, whatever the umask.
    txn_folder = discarded.report_dir(settings, doc["txn"]).parent
    for path in [txn_folder, *txn_folder.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    by_table = {t["table"]: t for t in summary["tables"]}
    assert by_table["public.users"]["columns_only_in_replaced"] == ["nickname"]
    assert "public.alembic_version" not in by_table
    for table in ("users", "trips"):
        assert _ops(settings, doc["txn"], by_table[f"public.{table}"]) == truth.expected(table), table
    audit = by_table["public.audit_events"]
    assert audit["status"] == "only_in_replaced" and audit["insert"] == 1 and audit["rows_replaced"] == 1
    files = [json.loads(line) for line in (discarded.report_dir(settings, doc["txn"]) / "files.jsonl").open()]
    assert sorted((f["op"], f["path"]) for f in files) == truth.file_ops()
    assert summary["totals"]["insert"] == sum(map(len, truth.inserted.values())) + 1  # + the audit_events row
    assert by_table["public.users"]["written_after_restore"] == 2
    flagged = [r for r in discarded.read_lines(discarded.report_dir(settings, doc["txn"]) / by_table["public.users"]["file"])
               if r.get("after_restore")]
    assert [(r["op"], r["key"]) for r in flagged] == [("insert", {"id": i}) for i in reused]

    before = _user_ids(settings)
    dry = carry_forward.carry_rows(settings, doc["txn"], "users", ops=("insert",), dry_run=True)
    assert dry["applied"] == len(truth.inserted["users"]) - 2 and dry["skipped"] == 2
    assert dry["tables"][0]["sequences"][0]["to"] == max(truth.inserted["users"])
    assert _user_ids(settings) == before  # a dry run applies nothing, not even the sequence's setval
    with state.connect(settings) as conn:
        assert conn.execute("select last_value from users_id_seq").fetchone()[0] == reused[-1]

    done = carry_forward.carry_rows(settings, doc["txn"], "users", ops=("insert",))
    assert done["applied"] == len(truth.inserted["users"]) - 2
    users = done["tables"][0]
    assert [s["key"] for s in users["skipped_rows"]] == [{"id": i} for i in reused]
    assert "already exists" in users["skipped_rows"][0]["reason"]
    assert users["dropped_columns"] == ["nickname"]
    ids = _user_ids(settings)
    assert set(truth.inserted["users"]) <= ids
    with state.connect(settings) as conn:
        names = dict(conn.execute("select id, name from users where id = any(%s)", (truth.inserted["users"][2:],)))
        nxt = conn.execute("insert into users (email, name) values ('next@example.com', 'Next') returning id").fetchone()[0]
    assert names == {i: truth.names[i] for i in truth.inserted["users"][2:]}
    assert nxt == max(truth.inserted["users"]) + 1  # the sequence was advanced past the carried keys
    trips = carry_forward.carry_rows(settings, doc["txn"], "trips", ops=("insert",))
    assert trips["applied"] == len(truth.inserted["trips"]) and trips["skipped"] == 0
    # Updates and deletes too: trip 1's new plan, trip 2 deleted again; user 20's rename is carried, user 5's
    # is not (the restored app changed that row since, so its `before` no longer matches).
    with state.connect(settings) as conn:
        conn.execute("update users set name = 'Changed after the restore' where id = 5")
    more = carry_forward.carry_rows(settings, doc["txn"], ["trips", "users"], ops=("update", "delete"))
    assert more["tables"][0]["applied_by_op"] == {"update": 1, "delete": 1}
    assert {tuple(s["key"].values()) for s in more["tables"][1]["skipped_rows"]} == {(5,)}
    with state.connect(settings) as conn:
        assert conn.execute("select plan->>'note' from trips where id = 1").fetchone()[0] == "longer"
        assert conn.execute("select count(*) from trips where id = 2").fetchone()[0] == 0
        assert dict(conn.execute("select id, name from users where id in (5, 20)")) == {
            5: "Changed after the restore", 20: "Renamed"}

    copied = carry_forward.carry_files(settings, doc["txn"])
    assert sorted(copied["copied"]) == sorted(truth.uploads)  # the deploy's own new-file.txt is one of them
    for rel in truth.uploads:
        assert (settings.data_base_dir / rel).read_bytes() == truth.upload_bytes[rel]
    log = settings.rollback_log.read_text()
    assert "step=carry-forward" in log and "step=discarded status=ok" in log


def test_carry_forward_refuses_bad_input(settings):
    snap = create_snapshot(settings)
    doc = run_restore_local(settings, snap["id"], reason="nothing changed")
    with pytest.raises(discarded.ReportNotFound):
        carry_forward.carry_rows(settings, doc["txn"], "users")
    summary = discarded.build_report(settings, doc["txn"])
    assert summary["totals"] == {"insert": 0, "update": 0, "delete": 0, "tables_changed": 0}
    assert summary["files"]["added"] == summary["files"]["changed"] == summary["files"]["removed"] == 0
    with pytest.raises(discarded.ReportNotFound, match="not in the discarded-writes report"):
        carry_forward.carry_rows(settings, doc["txn"], "no_such_table")
    with pytest.raises(RollbackError, match="--op must be one of"):
        carry_forward.carry_rows(settings, doc["txn"], "users", ops=("upsert",))
    result = carry_forward.carry_rows(settings, doc["txn"], ["users", "trips"])
    assert result["applied"] == 0 and "nothing to carry forward" in result["tables"][1]["note"]
    run_restore_local(settings, snap["id"], reason="again")
    with pytest.raises(RollbackError, match="the live database is no longer the one"):
        discarded.build_report(settings, doc["txn"])  # the newer restore replaced what this one restored


def _wait_for_write_counters(settings, truth, timeout: float = 15.0) -> None:
    """pg_stat_user_tables is fed by each backend when it goes idle or exits, a moment after its client
    saw the commit: the plan's estimates read it, so wait until the recorded writes are counted."""
    deadline = time.monotonic() + timeout
    while True:
        with state.connect(settings) as conn:
            rows = {name: (ins, upd, dele) for name, ins, upd, dele in conn.execute(
                "select relname, n_tup_ins, n_tup_upd, n_tup_del from pg_stat_user_tables "
                "where relname in ('users', 'trips')")}
        if all(rows.get(t, (0, 0, 0))[0] >= len(truth.inserted[t]) and rows.get(t, (0, 0, 0))[1] >= len(truth.updated[t])
               and rows.get(t, (0, 0, 0))[2] >= len(truth.deleted[t]) for t in ("users", "trips")):
            return
        assert time.monotonic() < deadline, f"write counters never caught up: {rows}"
        time.sleep(0.1)


def _ops(settings, txn: str, entry: dict) -> dict[str, list]:
    out: dict[str, list] = {"insert": [], "update": [], "delete": []}
    if entry["file"]:
        for record in discarded.read_lines(discarded.report_dir(settings, txn) / entry["file"]):
            out[record["op"]].append(record["key"]["id"])
    return {op: sorted(keys) for op, keys in out.items()}


def _user_ids(settings) -> set[int]:
    with state.connect(settings) as conn:
        return {r[0] for r in conn.execute("select id from users")}



def test_text_keys_composite_keys_and_tables_without_a_key(settings):
    """Keys that are not integers are merged in byte order (mixed case, accents, CJK, a composite key);
    a table without a primary key is reported with its row counts only."""
    with state.connect(settings) as conn:
        conn.execute("create table tags (name text primary key, n int)")
        conn.execute("create table pairs (a text, b int, v text, primary key (a, b))")
        conn.execute("create table events (what text)")
        for name in ("apple", "Banana", "éclair", "zebra", "京都", "Zulu", "a b", "a-b"):
            conn.execute("insert into tags values (%s, 1)", (name,))
        conn.execute("insert into pairs values ('x', 1, 'one'), ('x', 2, 'two'), ('X', 1, 'big')")
        conn.execute("insert into events select 'e' || g from generate_series(1, 5) g")
    snap = create_snapshot(settings)
    with state.connect(settings) as conn:
        conn.execute("insert into tags values ('Ångström', 2), ('aardvark', 2), ('大阪', 2)")
        conn.execute("update tags set n = 9 where name in ('zebra', '京都')")
        conn.execute("delete from tags where name in ('Banana', 'a-b')")
        conn.execute("insert into pairs values ('x', 3, 'three')")
        conn.execute("update pairs set v = 'BIG' where a = 'X'")
        conn.execute("delete from pairs where a = 'x' and b = 1")
        conn.execute("insert into events values ('late')")
    doc = run_restore_local(settings, snap["id"], reason="keys")
    summary = discarded.build_report(settings, doc["txn"])
    by_table = {t["table"]: t for t in summary["tables"]}
    assert _keys(settings, doc["txn"], by_table["public.tags"], "name") == {
        "insert": ["aardvark", "Ångström", "大阪"], "update": ["zebra", "京都"], "delete": ["a-b", "Banana"]}
    assert _keys(settings, doc["txn"], by_table["public.pairs"], "a", "b") == {
        "insert": [("x", 3)], "update": [("X", 1)], "delete": [("x", 1)]}
    events = by_table["public.events"]
    assert events["status"] == "no_primary_key" and (events["rows_replaced"], events["rows_restored"]) == (6, 5)
    assert events["file"] is None and summary["totals"]["insert"] == 4


def _keys(settings, txn: str, entry: dict, *columns: str) -> dict[str, list]:
    out: dict[str, list] = {"insert": [], "update": [], "delete": []}
    for record in discarded.read_lines(discarded.report_dir(settings, txn) / entry["file"]):
        key = tuple(record["key"][c] for c in columns)
        out[record["op"]].append(key[0] if len(key) == 1 else key)
    return {op: sorted(keys, key=str.casefold if columns == ("name",) else None) for op, keys in out.items()}


def test_updates_carry_forward_on_columns_without_an_equality_operator(settings):
    """json, xml and geometric columns have no `=`: the update's "row unchanged since the restore" check
    compares them as text, and the discarded update is re-applied."""
    with state.connect(settings) as conn:
        conn.execute("create table docs (id int primary key, body json, at point, tags json[])")
        conn.execute("""insert into docs values (1, '{"v": 1}', point(1, 2), array['{"t": 1}']::json[]),
                                                (2, '{"v": 2}', point(3, 4), null)""")
    snap = create_snapshot(settings)
    with state.connect(settings) as conn:
        conn.execute("""update docs set body = '{"v": 10, "note": "kept"}', at = point(5, 6) where id = 1""")
    doc = run_restore_local(settings, snap["id"], reason="json")
    summary = discarded.build_report(settings, doc["txn"])
    assert {t["table"]: t["update"] for t in summary["tables"]}["public.docs"] == 1
    done = carry_forward.carry_rows(settings, doc["txn"], "docs", ops=("update",))
    assert done["applied"] == 1 and done["skipped"] == 0, done
    with state.connect(settings) as conn:
        body, at = conn.execute("select body::text, at::text from docs where id = 1").fetchone()
    assert json.loads(body) == {"v": 10, "note": "kept"} and at == "(5,6)"
