"""Restore drills on a real Postgres and a real data tree: a drill proves a snapshot restorable and
records its RTO without touching the live database or tree (watched the whole time); a corrupted but
well-hashed snapshot fails its drill and alerts; a restore or snapshot arriving mid-drill wins."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import psycopg
import pytest

from rollback import standby
from rollback.archive import create_archive
from rollback.drill import DrillAbandoned, drill_db_name, drill_tree_path, run_drill, snapshots_to_drill
from rollback.fsutil import sha256_file
from rollback.lock import ServiceLock
from rollback.manifest import Manifest
from rollback.restore import begin_restore
from rollback.snapshot import create_snapshot
from rollback.verify import index_after_snapshot
from tests import state
from tests.canary.servers import WebhookReceiver
from tests.conftest import PG_ADMIN, cli

pytestmark = pytest.mark.timeout(120)


def _db_exists(name: str) -> bool:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def _live_fingerprint(settings) -> tuple:
    """The live database's content (every table's rows, hashed), its relations, and the live tree's
    entries with their mtimes: anything a drill changed would show here."""
    with state.connect(settings) as conn:
        tables = [r[0] for r in conn.execute(
            "select quote_ident(schemaname) || '.' || quote_ident(tablename) from pg_tables "
            "where schemaname = 'public' order by 1")]
        # An order-independent content hash: the sum of every row's 64-bit hash.
        content = {t: conn.execute(f"select count(*), sum(hashtextextended(x::text, 0)) from {t} x").fetchone()
                   for t in tables}
        # oids and file nodes: a table dropped and re-created (pg_restore --clean) gets new ones.
        relations = conn.execute("select string_agg(c.oid || ':' || c.relfilenode, ',' order by c.oid) from pg_class c "
                                 "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public'").fetchone()[0]
    siblings = sorted(p.name for p in settings.data_base_dir.parent.iterdir())
    return content, relations, standby.tree_digest(settings.data_base_dir), siblings


class _Watch(threading.Thread):
    """Samples the live fingerprint and whether the scratch database exists, until stopped."""

    def __init__(self, settings):
        super().__init__(daemon=True)
        self.settings, self.stop = settings, threading.Event()
        self.samples: list[tuple] = []
        self.saw_scratch_db = False

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(_live_fingerprint(self.settings))
            self.saw_scratch_db |= _db_exists(drill_db_name(self.settings))


def _big_table(settings, rows: int) -> None:
    """Enough rows that pg_restore of the drill takes a noticeable time."""
    with state.connect(settings) as conn:
        conn.execute("create table bulk (id bigint primary key, payload text)")
        conn.execute("insert into bulk select g, repeat(md5(g::text), 8) from generate_series(1, %s) g", (rows,))


def test_drill_proves_restorable_without_touching_live(settings):
    _big_table(settings, 150_000)  # a drill long enough for the watch to sample it many times
    # The app keeps writing while the snapshot is taken: the recorded counts must still be the dump's.
    writing, written = threading.Event(), []

    def writer():
        with state.connect(settings) as conn:
            while not writing.is_set():
                conn.execute("insert into trips (user_id, title, plan) values (1, 'w', '{}')")
                written.append(1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        entry = create_snapshot(settings, notes="drill me")
    finally:
        writing.set()
        thread.join()
    assert entry["stats"]["tables"]["public.bulk"] == 150_000
    assert 2 < entry["stats"]["tables"]["public.trips"] < 2 + len(written)  # taken mid-stream
    before = _live_fingerprint(settings)

    watch = _Watch(settings)
    watch.start()
    try:
        result = run_drill(settings, "latest")
    finally:
        watch.stop.set()
        watch.join()

    assert result["ok"], result
    assert result["error"] is None
    assert set(result["phases"]) == {"verify", "database", "data", "checks", "cleanup"}
    assert result["rto_sec"] > 0
    assert result["rto_sec"] == pytest.approx(sum(result["phases"][p] for p in ("verify", "database", "data", "checks")),
                                              abs=0.05)
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["row_counts"]["ok"] and "as recorded" in checks["row_counts"]["detail"]
    assert checks["data_tree"]["ok"] and checks["users_file"]["ok"] and checks["alembic"]["ok"]
    # No worker indexed this snapshot: the drill indexed it and says what its tree check then proves.
    assert "indexed only now" in checks["data_tree"]["detail"], checks["data_tree"]
    # The watch overlapped the drill (it saw the scratch database) and the live state never changed.
    assert watch.saw_scratch_db
    assert len(watch.samples) >= 3, len(watch.samples)
    assert all(sample == before for sample in watch.samples)
    assert _live_fingerprint(settings) == before
    # Scratch copies removed; the result is recorded with the snapshot.
    assert not _db_exists(drill_db_name(settings))
    assert not drill_tree_path(settings).exists()
    recorded = Manifest.for_settings(settings).get(entry["id"])["drill"]
    assert recorded == {k: result[k] for k in ("at", "ok", "rto_sec", "phases", "error")}
    assert snapshots_to_drill(settings) == [entry["id"]]  # all drilled: the newest again


def _replace_dump_with_one_missing(settings, entry: dict, table: str) -> None:
    """A corrupted-but-well-hashed snapshot: its dump is of a database lacking `table`, and the
    manifest's hash and size are rewritten to match, so `verify` passes."""
    broken = f"{settings.database.dbname}_broken"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'create database "{broken}" template "{settings.database.dbname}"')
    try:
        with psycopg.connect(settings.database.conninfo(broken), autocommit=True) as conn:
            conn.execute(f"drop table {table}")
        dump = settings.backup_dir / entry["id"] / entry["artifacts"]["db"]["file"]
        subprocess.run(["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", "-f", str(dump), broken], check=True)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{broken}" with (force)')
    digest, size = sha256_file(dump)
    art = dict(entry["artifacts"]["db"], sha256=digest, size=size)
    Manifest.for_settings(settings).update(entry["id"], artifacts=dict(entry["artifacts"], db=art))


def test_corrupted_but_well_hashed_snapshot_fails_its_drill_and_alerts(settings, env):
    entry = create_snapshot(settings)
    _replace_dump_with_one_missing(settings, entry, "trips")
    assert cli(env, "verify", entry["id"]).returncode == 0  # the hashes alone cannot tell

    hook = WebhookReceiver()
    try:
        proc = cli(dict(env, ROLLBACK_NOTIFY_WEBHOOK_URL=hook.url, READYZ_TABLES="users:10,trips:1"),
                   "drill", "--snapshot", entry["id"], "--json")
    finally:
        hook.stop()
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"snapshot_id", "ok", "rto_sec", "phases", "error"}
    assert out["snapshot_id"] == entry["id"] and out["ok"] is False and out["rto_sec"] is None
    assert "table trips does not exist" in out["error"]
    assert "public.trips: missing (recorded 2 rows)" in out["error"]
    assert out["phases"]["cleanup"] >= 0
    texts = hook.texts()
    assert len(texts) == 1 and "Restore drill FAILED" in texts[0] and entry["id"] in texts[0]
    recorded = Manifest.for_settings(settings).get(entry["id"])["drill"]
    assert recorded["ok"] is False and "trips" in recorded["error"]
    assert not _db_exists(drill_db_name(settings))
    listing = cli(env, "list")
    assert "NO (drill failed" in listing.stdout


def _restoring(db: str) -> bool:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return conn.execute("select count(*) from pg_stat_activity where datname = %s and application_name = "
                            "'pg_restore'", (db,)).fetchone()[0] > 0


def test_a_restore_arriving_mid_drill_starts_at_once_and_the_drill_is_abandoned(settings):
    _big_table(settings, 1_200_000)  # pg_restore takes ~3 s on 2 cores: long enough to be cut short
    entry = create_snapshot(settings)
    scratch = drill_db_name(settings)
    outcome: dict = {}

    def drill():
        try:
            outcome["result"] = run_drill(settings, entry["id"])
        except DrillAbandoned as exc:
            outcome["abandoned"] = exc
            outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=drill)
    thread.start()
    # Wait until pg_restore is busy filling the scratch database.
    deadline = time.monotonic() + 30
    while not _restoring(scratch):
        if time.monotonic() > deadline:
            pytest.fail("the drill's pg_restore never started")
        time.sleep(0.02)
    started = time.monotonic()
    doc = begin_restore(settings, entry["id"], reason="drill_preempt_test")  # not refused, not kept waiting
    admitted = time.monotonic()
    # pg_restore is cut short (its sessions terminated), not left to finish its seconds of work.
    while _restoring(scratch) and time.monotonic() - admitted < 10:
        time.sleep(0.02)
    stopped = time.monotonic()
    thread.join(30)
    assert admitted - started < 1.0
    assert stopped - admitted < 1.5
    assert "abandoned" in outcome, outcome
    assert doc["txn"] in str(outcome["abandoned"])
    assert "restore" in outcome["abandoned"].holder.get("kind", "")
    assert not _db_exists(scratch)
    assert not drill_tree_path(settings).exists()
    assert "drill" not in Manifest.for_settings(settings).get(entry["id"])  # an abandoned drill proves nothing
    # While the restore owns the service, a drill is refused.
    with pytest.raises(Exception, match="drill refused: restore"):
        run_drill(settings, entry["id"])


def test_a_snapshot_starting_mid_drill_abandons_it(settings):
    entry = create_snapshot(settings)
    lock = ServiceLock(settings.backup_dir)
    held = threading.Event()
    release = threading.Event()

    def snapshot_holding_the_lock():
        with lock.held({"kind": "snapshot", "snapshot_id": "20990101T000000Z-abcdef"}):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=snapshot_holding_the_lock)

    def sink(step, done, total, message):
        if message.startswith("extracting the archive"):  # the data phase starts: a snapshot arrives
            holder.start()
            held.wait(5)

    try:
        with pytest.raises(DrillAbandoned, match="snapshot 20990101T000000Z-abcdef in progress"):
            run_drill(settings, entry["id"], progress=sink)
    finally:
        release.set()
        holder.join()
    assert not drill_tree_path(settings).exists()
    assert not _db_exists(drill_db_name(settings))
    assert "drill" not in Manifest.for_settings(settings).get(entry["id"])


def test_a_data_archive_missing_a_file_but_re_hashed_fails_its_drill(settings, tmp_path):
    entry = create_snapshot(settings)
    assert index_after_snapshot(settings, entry["id"])["indexed"]  # as the worker does after a snapshot
    tampered = tmp_path / "tampered"
    shutil.copytree(settings.data_base_dir, tampered, symlinks=True)
    (tampered / "uploads" / "2026" / "photo.bin").unlink()
    art = entry["artifacts"]["data"]
    path = settings.backup_dir / entry["id"] / art["file"]
    path.unlink()
    info = create_archive(tampered, path, codec=art["codec"])
    Manifest.for_settings(settings).update(entry["id"], artifacts=dict(
        entry["artifacts"], data=dict(art, sha256=info.sha256, size=info.size, tar_bytes=info.tar_bytes)))

    result = run_drill(settings, entry["id"])
    assert not result["ok"]
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["data_tree"]["ok"] is False
    assert "files 6, recorded 7" in checks["data_tree"]["detail"]
    assert checks["row_counts"]["ok"] and checks["users_file"]["ok"]
