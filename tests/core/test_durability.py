"""Crash safety: killed manifest writers, killed restores, locks released by the kernel, mounts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rollback.errors import LockHeld, ManifestCorrupt
from rollback.journal import Journal
from rollback.lock import ServiceLock
from rollback.manifest import Manifest
from rollback.restore import reconcile, run_remaining, run_restore_local
from rollback.snapshot import create_snapshot
from tests import state
from tests.conftest import ROOT

WRITER = r"""
import sys, itertools
from rollback.manifest import Manifest
m = Manifest(sys.argv[1])
for i in itertools.count(len(m.entries())):
    entry = {"id": "20260101T%06dZ-abcdef" % i, "created_at": "x", "notes": "n" * 20000,
             "app_revision": "r", "alembic_revision": None, "ready_check": None,
             "artifacts": {"db": {"file": "db.dump", "sha256": "0" * 64, "size": 1},
                           "data": {"file": "data.tar.gz", "sha256": "0" * 64, "size": 1}}}
    m.add(entry)
    print(i, flush=True)
"""


def test_manifest_stays_valid_when_the_writer_is_killed(tmp_path):
    """SIGKILL a process in the middle of manifest writes, 15 times: the file always parses."""
    backup = tmp_path / "backup"
    counts = []
    for round_ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(backup)], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(3 + round_ % 4):  # let it complete a few writes, then kill mid-way
            proc.stdout.readline()
        time.sleep(0.001 * (round_ % 5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        entries = Manifest(backup).entries()  # raises ManifestCorrupt if torn
        ids = [e["id"] for e in entries]
        assert ids == sorted(set(ids))
        counts.append(len(entries))
    assert counts == sorted(counts) and counts[-1] >= 15  # each round kept all earlier entries
    leftovers = [p.name for p in backup.iterdir() if ".tmp-" in p.name]
    assert all(name.startswith(".manifest.json.tmp-") for name in leftovers)


def test_corrupt_manifest_is_a_typed_error_and_is_not_rewritten(settings):
    create_snapshot(settings)
    path = settings.backup_dir / "manifest.json"
    damaged = path.read_bytes()[:-7]
    path.write_bytes(damaged)
    with pytest.raises(ManifestCorrupt, match="left untouched"):
        Manifest(settings.backup_dir).entries()
    with pytest.raises(ManifestCorrupt):
        create_snapshot(settings)
    assert path.read_bytes() == damaged


def test_lock_is_released_when_its_holder_dies(tmp_path):
    backup = tmp_path / "backup"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rollback.lock import ServiceLock\n"
         "with ServiceLock(sys.argv[1]).held({'kind': 'snapshot', 'snapshot_id': 'x'}):\n"
         "    print('held', flush=True); time.sleep(60)", str(backup)],
        cwd=ROOT, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    lock = ServiceLock(backup)
    with pytest.raises(LockHeld, match="snapshot x in progress"):
        with lock.held({"kind": "test"}):
            pass
    holder.kill()
    holder.wait()
    with lock.held({"kind": "test"}):  # the kernel released it: no stale lock
        pass


def test_killed_restore_is_resumed_to_the_snapshot_state(settings, env):
    """kill -9 a --local restore in the middle of a step; reconcile + resume completes it."""
    big = settings.data_base_dir / "uploads" / "big.bin"
    big.write_bytes(os.urandom(48 << 20))
    before = state.capture(settings)
    create_snapshot(settings)
    state.bad_deploy(settings, settings.app_repo_dir)

    child_env = dict(os.environ, **dict(env, READYZ_URL=settings.readyz_url))
    proc = subprocess.Popen([sys.executable, "-m", "manage.rollback", "restore", "--snapshot", "latest",
                             "--reason", "kill test", "--yes", "--local"], cwd=ROOT, env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = Journal(settings.backup_dir)
    killed_in = None
    deadline = time.monotonic() + 60
    while killed_in is None and time.monotonic() < deadline:
        docs = journal.all()
        running = [s for s, v in docs[-1]["steps"].items() if v["status"] == "running"] if docs else []
        if running and running[0] in ("db", "data"):
            proc.send_signal(signal.SIGKILL)
            killed_in = running[0]
        time.sleep(0.005)
    proc.wait()
    assert killed_in, "the restore finished before it could be killed"
    txn = journal.all()[-1]["txn"]
    assert journal.load(txn)["status"] == "running"

    outcome = reconcile(settings)
    assert outcome["action"] == "resume" and killed_in in outcome["steps"]
    doc = run_remaining(settings, txn)
    assert doc["status"] == "succeeded", doc
    assert doc["steps"][killed_in]["runs"] == 2
    assert state.capture(settings) == before
    assert ServiceLock(settings.backup_dir).active() is None


@contextlib.contextmanager
def tmpfs(path, size: str):
    """A real small filesystem mounted at `path` for the test (skipped where mounting is impossible)."""
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_data_dir_that_is_a_mount_point_swaps_children(settings, tmp_path):
    """Render's disk cannot be renamed: children are parked in .pre-<txn> and replaced."""
    with tmpfs(tmp_path / "disk", "64m") as mount_dir:
        state.populate_data_dir(mount_dir)
        mounted = settings.with_overrides(data_base_dir=mount_dir)
        before = state.tree(mount_dir)
        create_snapshot(mounted)
        (mount_dir / "users.json").write_text("broken")
        (mount_dir / "extra.txt").write_text("new")

        doc = run_restore_local(mounted, "latest", reason="mount")

        assert doc["status"] == "succeeded" and doc["marks"]["data_mounted"] is True
        pre = mount_dir / f".pre-{doc['txn']}"
        after = {k: v for k, v in state.tree(mount_dir).items() if not k.startswith(".pre-")}
        assert after == before
        assert (pre / "extra.txt").read_text() == "new" and (pre / "users.json").read_text() == "broken"
        assert os.path.ismount(mount_dir)
        # A later snapshot does not archive the parked tree.
        second = create_snapshot(mounted)
        archive = mounted.backup_dir / second["id"] / second["artifacts"]["data"]["file"]
        listing = subprocess.run(["tar", "--auto-compress", "-tf", str(archive)],
                                 capture_output=True, text=True, check=True).stdout
        assert ".pre-" not in listing


def test_crash_before_manifest_entry_leaves_nothing_visible(settings, monkeypatch):
    """A failure after the folder rename but before the manifest write leaves no entry, no folder."""
    first = create_snapshot(settings)

    def fail(self, entry):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Manifest, "add", fail)
    with pytest.raises(Exception, match="No space left"):
        create_snapshot(settings)
    monkeypatch.undo()
    assert [e["id"] for e in Manifest(settings.backup_dir).entries()] == [first["id"]]
    assert sorted(p.name for p in settings.backup_dir.iterdir() if p.is_dir()) == [first["id"]]
    assert "backup failed" in settings.rollback_log.read_text()


def test_prune_keeps_newest_ready_and_in_use(settings):
    from rollback.retention import prune

    small = settings.with_overrides(backup_retention=2)
    ids = [create_snapshot(small)["id"] for _ in range(5)]
    Manifest(small.backup_dir).update(ids[1], ready_check={"status": "ok", "at": "t", "deploy_id": "d"})
    report = prune(small)
    assert report["removed"] == [ids[0], ids[2]]
    assert [e["id"] for e in Manifest(small.backup_dir).entries()] == [ids[1], ids[3], ids[4]]
    assert not (small.backup_dir / ids[0]).exists() and (small.backup_dir / ids[1]).exists()

    # A snapshot used by an admitted restore is never pruned, even when out of retention.
    from rollback.restore import begin_restore

    begin_restore(small, ids[3], reason="in use")
    tiny = small.with_overrides(backup_retention=1)
    report = prune(tiny)
    assert ids[3] in report["kept"] and ids[1] in report["kept"]
    assert json.loads((small.backup_dir / "active.json").read_text())["snapshot_id"] == ids[3]


def test_full_disk_during_snapshot_leaves_no_entry_and_no_folder(settings, tmp_path):
    """BACKUP_DIR on a 3 MiB tmpfs: the second, larger snapshot hits ENOSPC and leaves nothing behind."""
    from rollback.errors import RollbackError
    from rollback.verify import verify_snapshot

    with tmpfs(tmp_path / "small-disk", "3m") as small_disk:
        on_small = settings.with_overrides(backup_dir=small_disk / "backup")
        first = create_snapshot(on_small)
        (settings.data_base_dir / "uploads" / "big.bin").write_bytes(os.urandom(4 << 20))
        with pytest.raises(RollbackError, match="No space left on device"):
            create_snapshot(on_small)
        assert [e["id"] for e in Manifest(on_small.backup_dir).entries()] == [first["id"]]
        assert sorted(p.name for p in on_small.backup_dir.iterdir() if p.is_dir()) == [first["id"]]
        assert verify_snapshot(on_small, first["id"])["ok"] is True
        assert "backup failed" in on_small.rollback_log.read_text()
