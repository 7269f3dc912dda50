"""Snapshot → bad deploy → restore, in-process (the code path of `--local`), on real parts."""

from __future__ import annotations

import json
import stat
import time

import pytest

from rollback import pg
from rollback.errors import PreflightFailed, StepFailed
from rollback.journal import Journal
from rollback.manifest import Manifest
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import git


def test_snapshot_records_everything(settings):
    entry = create_snapshot(settings, notes="before deploy")
    folder = settings.backup_dir / entry["id"]
    assert Manifest(settings.backup_dir).get(entry["id"]) == entry
    assert entry["app_revision"] == state.git_head(settings.app_repo_dir)
    assert entry["app_dirty"] is False
    assert entry["alembic_revision"] == "0002_trips"
    assert entry["ready_check"] is None
    for art in entry["artifacts"].values():
        path = folder / art["file"]
        assert path.stat().st_size == art["size"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.backup_dir.stat().st_mode) == 0o700
    assert json.loads((folder / "snapshot.json").read_text()) == entry
    assert not list(settings.backup_dir.glob(".tmp-*"))
    log = settings.rollback_log.read_text()
    assert f"backup start id={entry['id']}" in log and f"backup complete id={entry['id']}" in log


@pytest.mark.parametrize("strategy", ["swap", "in-place"])
def test_round_trip_restores_db_data_code_and_revision(settings, tmp_path, monkeypatch, strategy):
    settings = settings.with_overrides(db_restore_strategy=strategy)
    before = state.capture(settings)
    snap = create_snapshot(settings, notes="v1")

    trace = tmp_path / "downgrade.trace"
    monkeypatch.setenv("MIGRATION_TRACE_FILE", str(trace))
    state.bad_deploy(settings, settings.app_repo_dir)
    broken = state.capture(settings)
    assert broken["alembic"] == "0003_bad_deploy" and broken["head"] != before["head"]
    assert broken["tree"] != before["tree"] and broken["rows"] != before["rows"]

    doc = run_restore_local(settings, "latest", reason="test round trip")

    assert doc["status"] == "succeeded", doc
    after = state.capture(settings)
    assert after["schema"] == before["schema"]
    assert after["rows"] == before["rows"]
    assert after["tree"] == before["tree"]
    assert after["head"] == before["head"] == snap["app_revision"]
    assert after["alembic"] == before["alembic"] == "0002_trips"
    if strategy == "in-place":
        assert trace.read_text() == "downgrade 0003_bad_deploy\n"
    else:  # the live database was renamed aside untouched, not downgraded
        assert not trace.exists()

    # Nothing lost: the replaced data tree, database and code stay recoverable.
    txn = doc["txn"]
    pre_tree = settings.data_base_dir.with_name(f"{settings.data_base_dir.name}.pre-{txn}")
    assert state.tree(pre_tree) == broken["tree"]
    pre_db = doc["marks"]["db_pre_copy"]
    assert pg.alembic_revision(settings.database, pre_db) == "0003_bad_deploy"
    assert git(settings.app_repo_dir, "rev-parse", f"refs/rollback/pre-{txn.removeprefix('txn-')}") == broken["head"]

    log = settings.rollback_log.read_text()
    for step in ("preflight", "db", "data", "code", "readyz"):
        assert f"ROLLBACK id={txn} step={step} status=start" in log
        assert f"ROLLBACK id={txn} step={step} status=ok" in log
    assert all(doc["steps"][s]["duration_sec"] is not None for s in doc["steps"])


def test_restore_invokes_alembic_downgrade(settings, tmp_path, monkeypatch):
    """The downgrade of the new migration really ran on the database before pg_restore."""
    settings = settings.with_overrides(db_restore_strategy="in-place")
    create_snapshot(settings)
    trace = tmp_path / "downgrade.trace"
    monkeypatch.setenv("MIGRATION_TRACE_FILE", str(trace))
    state.bad_deploy(settings, settings.app_repo_dir)

    doc = run_restore_local(settings, "latest", reason="downgrade proof")

    assert doc["status"] == "succeeded"
    # Observed on the database between the two phases of the db step, not merely "called".
    assert doc["marks"]["db_revision_before"] == "0003_bad_deploy"
    assert doc["marks"]["db_revision_after_downgrade"] == "0002_trips"
    assert trace.read_text() == "downgrade 0003_bad_deploy\n"
    with state.connect(settings) as conn:
        assert conn.execute("select to_regclass('public.audit_events')").fetchone()[0] is None
        cols = {r[0] for r in conn.execute("select column_name from information_schema.columns "
                                           "where table_name = 'users'")}
    assert "nickname" not in cols
    assert "fallback" not in settings.rollback_log.read_text()


def test_unknown_db_revision_falls_back_to_clean_slate(settings):
    """A database at a head the deployed code does not know is restored from a clean slate, loudly."""
    settings = settings.with_overrides(db_restore_strategy="in-place")
    before = state.capture(settings)
    create_snapshot(settings)
    with state.connect(settings) as conn:
        conn.execute("update alembic_version set version_num = 'ffffdeadbeef'")
        conn.execute("create table stray (id int)")

    doc = run_restore_local(settings, "latest", reason="unknown head")

    assert doc["status"] == "succeeded_with_warnings"  # a fallback is never a plain success
    assert doc["warnings"] and "clean slate" in doc["warnings"][0]
    after = state.capture(settings)
    assert after["schema"] == before["schema"] and after["rows"] == before["rows"]
    assert "step=db status=fallback method=clean-slate" in settings.rollback_log.read_text()


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_gzip_codec_round_trip(settings):
    """BACKUP_CODEC=gzip writes the runbook's data.tar.gz, and it restores like zstd does."""
    gz = settings.with_overrides(backup_codec="gzip")
    before = state.capture(gz)
    snap = create_snapshot(gz)
    assert snap["artifacts"]["data"]["file"] == "data.tar.gz" and snap["artifacts"]["data"]["codec"] == "gzip"
    state.bad_deploy(gz, gz.app_repo_dir)
    assert run_restore_local(gz, "latest", reason="gzip")["status"] == "succeeded"
    assert state.capture(gz) == before


@pytest.mark.parametrize("artifact, damage", [
    ("db", "flip"), ("db", "truncate"), ("data", "flip"), ("data", "truncate"),
])
def test_damaged_artifact_is_refused_by_preflight_with_nothing_changed(settings, artifact, damage):
    snap = create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    broken = state.capture(settings)
    path = settings.backup_dir / snap["id"] / snap["artifacts"][artifact]["file"]
    if damage == "flip":
        _flip_byte(path, path.stat().st_size // 2)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(StepFailed) as info:
        run_restore_local(settings, snap["id"], reason="damaged")

    assert info.value.step == "preflight"
    assert ("SHA-256 mismatch" if damage == "flip" else "recorded") in str(info.value)
    assert state.capture(settings) == broken
    doc = Journal(settings.backup_dir).all()[-1]
    assert doc["status"] == "failed"
    assert all(doc["steps"][s]["status"] == "pending" for s in ("db", "data", "code", "readyz"))
    with state.connect(settings) as conn:
        names = [r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                            (settings.database.dbname + "__pre%",))]
    assert names == []  # not even the safety copy was made


def test_swap_keeps_database_settings_and_leaves_live_untouched_on_failure(settings):
    with state.connect(settings) as conn:
        conn.execute(f'ALTER DATABASE "{settings.database.dbname}" SET work_mem = \'7MB\'')
    before = state.capture(settings)
    snap = create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    broken = state.capture(settings)
    # A dump whose revision differs from the record: the restored copy is refused before any rename.
    Manifest(settings.backup_dir).update(snap["id"], alembic_revision="0001_users")
    with pytest.raises(StepFailed, match="live database was not touched"):
        run_restore_local(settings, snap["id"], reason="bad record")
    assert state.capture(settings) == broken
    with state.connect(settings) as conn:
        leftovers = [r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                                (settings.database.dbname + "\\_\\_%",))]
    assert leftovers == []
    Manifest(settings.backup_dir).update(snap["id"], alembic_revision="0002_trips")
    assert run_restore_local(settings, snap["id"], reason="good")["status"] == "succeeded"
    assert state.capture(settings) == before
    with state.connect(settings) as conn:
        assert conn.execute("show work_mem").fetchone()[0] == "7MB"


def test_snapshot_with_unknown_revision_is_refused(settings):
    snap = create_snapshot(settings)
    Manifest(settings.backup_dir).update(snap["id"], alembic_revision="0999_from_the_future")
    with pytest.raises(StepFailed, match="unknown to the deployed code"):
        run_restore_local(settings, snap["id"], reason="unknown revision")


def test_reason_is_required(settings):
    create_snapshot(settings)
    with pytest.raises(PreflightFailed, match="reason"):
        run_restore_local(settings, "latest", reason="  ")


def test_code_step_clears_an_index_lock_left_by_a_killed_git(settings):
    """A worker killed during `git reset` leaves .git/index.lock; the resumed code step must not stick."""
    before = state.capture(settings)
    create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)
    (settings.app_repo_dir / ".git" / "index.lock").write_text("")
    doc = run_restore_local(settings, "latest", reason="stale git lock")
    assert doc["status"] == "succeeded"
    assert state.capture(settings) == before
    assert "step=code status=stale_lock_removed" in settings.rollback_log.read_text()


def test_code_step_waits_for_an_index_lock_another_git_holds_for_a_moment(settings):
    """A git running beside the code step (an operator's, or a killed attempt's still finishing) holds
    .git/index.lock for a moment: the step waits for it, as git advises, instead of failing or removing it."""
    import threading
    import types

    from rollback.resources.code import GitStrategy

    repo = settings.app_repo_dir
    target = git(repo, "rev-parse", "HEAD")
    state.bad_deploy(settings, repo)
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    releaser = threading.Timer(0.5, lock.unlink)
    releaser.start()
    step = types.SimpleNamespace(settings=settings, txn="txn-20261205T000000Z-abcdef")
    t0 = time.monotonic()
    try:
        GitStrategy(repo)._git_taking_index_lock(step, "reset", "--hard", "--quiet", target)
    finally:
        releaser.join()
    assert time.monotonic() - t0 >= 0.4
    assert git(repo, "rev-parse", "HEAD") == target
    log = settings.rollback_log.read_text() if settings.rollback_log.exists() else ""
    assert "stale_lock_removed" not in log  # it was not stale: nothing removed
