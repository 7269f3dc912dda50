"""Warm standby: a restore of the prepared snapshot only renames; anything off falls back to cold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollback.errors import StepFailed
from rollback.journal import Journal
from rollback.restore import run_restore_local
from rollback.snapshot import create_snapshot
from rollback.standby import STANDBY_FILE, prepare_standby, read_record
from tests import state


def _side_databases(settings) -> list[str]:
    with state.connect(settings) as conn:
        return sorted(r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                                 (settings.database.dbname + "\\_\\_%",)))


def test_restore_takes_the_warm_standby(settings):
    before = state.capture(settings)
    snap = create_snapshot(settings)
    record = prepare_standby(settings, snap["id"])
    assert record["snapshot_id"] == snap["id"] and Path(record["tree"]).is_dir()
    assert _side_databases(settings) == [record["database"]]
    # The standby is not part of the live state nor of later snapshots.
    assert state.tree(settings.data_base_dir) == before["tree"]
    state.bad_deploy(settings, settings.app_repo_dir)

    doc = run_restore_local(settings, snap["id"], reason="warm")

    assert doc["status"] == "succeeded"
    assert "warm standby" in doc["steps"]["preflight"]["detail"]
    assert "warm standby" in doc["steps"]["db"]["detail"]
    assert "warm standby" in doc["steps"]["data"]["detail"]
    assert state.capture(settings) == before
    assert not (settings.backup_dir / STANDBY_FILE).exists() and not Path(record["tree"]).exists()
    assert _side_databases(settings) == [doc["marks"]["db_pre_copy"]]  # only the kept previous state


@pytest.mark.parametrize("tamper", ["tree", "database", "stale", "older seal"])
def test_altered_or_stale_standby_falls_back_to_cold(settings, tamper):
    before = state.capture(settings)
    snap = create_snapshot(settings)
    record = prepare_standby(settings, snap["id"])
    if tamper == "tree":
        (Path(record["tree"]) / "users.json").write_text("edited after preparation")
    elif tamper == "older seal":  # a record written by a version that sealed the tree another way
        path = settings.backup_dir / STANDBY_FILE
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "tree_seal"}))
    elif tamper == "database":
        with state.connect(settings) as conn:
            conn.execute(f'COMMENT ON DATABASE "{record["database"]}" IS \'something else\'')
    else:  # a newer snapshot is restored; the standby is of the older one
        snap = create_snapshot(settings, notes="newer")
        before = state.capture(settings)
    state.bad_deploy(settings, settings.app_repo_dir)

    doc = run_restore_local(settings, snap["id"], reason="cold")

    assert doc["status"] == "succeeded"
    assert "cold restore" in doc["steps"]["preflight"]["detail"]
    if tamper == "older seal":
        assert "sealed by another version" in doc["steps"]["preflight"]["detail"]
    assert "pg_restore" in doc["steps"]["db"]["detail"] and "extracted" in doc["steps"]["data"]["detail"]
    assert state.capture(settings) == before


def test_snapshot_through_the_worker_prepares_the_standby(celery_worker, worker_settings):
    import time

    from tasks.snapshot import take_snapshot

    entry = take_snapshot.delay("warm").get(timeout=120)
    deadline = time.monotonic() + 60
    while (read_record(worker_settings) or {}).get("snapshot_id") != entry["id"] and time.monotonic() < deadline:
        time.sleep(0.1)
    record = json.loads((worker_settings.backup_dir / STANDBY_FILE).read_text())
    assert record["snapshot_id"] == entry["id"]


def test_a_dump_the_warm_preflight_did_not_hash_is_checked_before_it_is_read(settings):
    """The warm preflight reads only the standby; the in-place strategy reads the dump after all, so a dump
    altered since the snapshot is refused by the db step before anything is changed."""
    snap = create_snapshot(settings)
    prepare_standby(settings, snap["id"])
    state.bad_deploy(settings, settings.app_repo_dir)
    bad = state.capture(settings)
    dump = settings.backup_dir / snap["id"] / snap["artifacts"]["db"]["file"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    dump.write_bytes(bytes(data))

    with pytest.raises(StepFailed, match="does not match its recorded SHA-256"):
        run_restore_local(settings.with_overrides(db_restore_strategy="in-place"), snap["id"], reason="altered")

    doc = Journal(settings.backup_dir).all()[-1]
    assert doc["status"] == "failed", doc
    assert "warm standby" in doc["steps"]["preflight"]["detail"]  # the preflight did not read the dump
    assert doc["steps"]["db"]["status"] == "failed"
    assert "does not match its recorded SHA-256" in doc["steps"]["db"]["error"]
    assert state.capture(settings) == bad  # nothing was changed
