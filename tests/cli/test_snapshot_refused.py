"""A snapshot a restore could not use is refused when it is taken, before anything is dumped."""

from __future__ import annotations

from rollback.manifest import Manifest
from tests import state
from tests.conftest import cli


def snapshot_leftovers(settings) -> list[str]:
    """Snapshot folders (finished or not) in BACKUP_DIR; the lock files are not snapshots."""
    backup = settings.backup_dir
    return sorted(p.name for p in backup.iterdir() if p.is_dir() and p.name != "journal") if backup.exists() else []


def one_line_error(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_database_revision_unknown_to_the_deployed_code(live_env, settings):
    with state.connect(settings) as conn:
        conn.execute("update alembic_version set version_num = '9f9f_hotfix_by_hand'")
    done = cli(live_env, "snapshot", "--local", "--notes", "before deploy")
    assert done.returncode == 1
    error = one_line_error(done)
    assert error.startswith("error: snapshot refused: the database is at Alembic revision 9f9f_hotfix_by_hand")
    assert "a restore would refuse this snapshot" in error
    assert snapshot_leftovers(settings) == [] and Manifest(settings.backup_dir).entries() == []
    assert "backup failed" in settings.rollback_log.read_text()
    assert "backup start" in settings.rollback_log.read_text()


def test_migrations_unreadable(live_env, settings, tmp_path):
    done = cli(dict(live_env, ALEMBIC_CONFIG=str(tmp_path / "wrong" / "alembic.ini")), "snapshot", "--local")
    assert done.returncode == 2
    assert one_line_error(done).startswith("error: snapshot refused: ALEMBIC_CONFIG: ")
    assert snapshot_leftovers(settings) == [] and Manifest(settings.backup_dir).entries() == []


def test_a_known_revision_is_snapshotted(live_env, settings):
    done = cli(live_env, "snapshot", "--local")
    assert done.returncode == 0, done.stderr
    assert len(snapshot_leftovers(settings)) == 1 and len(Manifest(settings.backup_dir).entries()) == 1
