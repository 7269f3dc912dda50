"""Helpers that build, change and capture the protected app's state (db, data dir, code)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg

BAD_MIGRATION = '''"""bad deploy: nickname column, audit table and index

Revision ID: 0003_bad_deploy
Revises: 0002_trips
"""
import os

import sqlalchemy as sa
from alembic import op

revision = "0003_bad_deploy"
down_revision = "0002_trips"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("nickname", sa.String(50)))
    op.create_index("ix_users_name", "users", ["name"])
    op.create_table("audit_events", sa.Column("id", sa.Integer, primary_key=True), sa.Column("what", sa.Text))


def downgrade() -> None:
    # Leaves a trace outside the database, so a test can tell this downgrade really ran.
    trace = os.environ.get("MIGRATION_TRACE_FILE")
    if trace:
        with open(trace, "a") as f:
            f.write("downgrade 0003_bad_deploy\\n")
    op.drop_table("audit_events")
    op.drop_index("ix_users_name", table_name="users")
    op.drop_column("users", "nickname")
'''


def populate_data_dir(d: Path) -> None:
    """A data dir with nested folders, modes, a symlink, a hardlink, non-ASCII names, an empty dir."""
    (d / "uploads" / "2026").mkdir(parents=True)
    (d / "empty").mkdir()
    (d / "users.json").write_text('[{"id": 1, "name": "Aiko"}]')
    (d / "uploads" / "2026" / "photo.bin").write_bytes(os.urandom(64 * 1024))
    (d / "uploads" / "旅行メモ.txt").write_text("京都 → 大阪\n")
    (d / "café.txt").write_text("crème\n")
    secret = d / "private.key"
    secret.write_text("not a real key\n")
    secret.chmod(0o600)
    script = d / "hook.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (d / "current.json").symlink_to("users.json")
    os.link(d / "users.json", d / "users.hardlink.json")


def migrate(settings, target: str, command: str = "upgrade") -> None:
    env = dict(os.environ, DATABASE_URL=settings.database.sqlalchemy_url())
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(settings.alembic_config), command, target],
                   check=True, capture_output=True, env=env, cwd=settings.alembic_config.parent)


def connect(settings):
    return psycopg.connect(settings.database.conninfo(), autocommit=True)


def seed_rows(settings) -> None:
    with connect(settings) as conn:
        for i in range(1, 51):
            conn.execute("insert into users (email, name) values (%s, %s)", (f"user{i}@example.com", f"User {i}"))
        conn.execute("""insert into trips (user_id, title, plan) values (1, 'Kyoto', '{"days": 3}'), (2, 'Osaka', '{}')""")


def bad_deploy(settings, repo: Path) -> None:
    """A new commit with a migration (column + table + index), applied; rows and files changed."""
    (repo / "migrations" / "versions" / "0003_bad_deploy.py").write_text(BAD_MIGRATION)
    (repo / "app.py").write_text("BROKEN = True\n")
    for args in (["add", "-A"], ["commit", "-q", "-m", "bad deploy"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    migrate(settings, "head")
    with connect(settings) as conn:
        conn.execute("update users set name = 'changed', nickname = 'x' where id <= 10")
        conn.execute("delete from trips where id = 2")
        conn.execute("insert into users (email, name) values ('new@example.com', 'New')")
        conn.execute("insert into audit_events (what) values ('deploy')")
    d = settings.data_base_dir
    (d / "users.json").write_text("corrupted by the deploy")
    (d / "café.txt").unlink()
    (d / "uploads" / "new-file.txt").write_text("added by the deploy")
    (d / "hook.sh").chmod(0o644)


def schema_dump(settings) -> str:
    env = dict(os.environ, **settings.database.libpq_env())
    out = subprocess.run(["pg_dump", "--schema-only", "--no-owner"], check=True, capture_output=True,
                         text=True, env=env).stdout
    # pg_dump >= 15.14 brackets its output with a random \restrict key; it is not part of the schema.
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def row_hashes(settings) -> dict[str, str]:
    with connect(settings) as conn:
        tables = [r[0] for r in conn.execute(
            "select tablename from pg_tables where schemaname = 'public' order by 1")]
        return {t: conn.execute(f'select md5(coalesce(string_agg(t::text, \'|\' order by t::text), \'\')) '
                                f'from "{t}" t').fetchone()[0] for t in tables}


def tree(d: Path) -> dict[str, tuple]:
    """path -> (kind, mode, content hash or link target, inode group) for every entry under d."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for root, dirs, files in os.walk(d):
        for name in sorted(dirs + files):
            p = Path(root) / name
            st = p.lstat()
            rel = str(p.relative_to(d))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", None, os.readlink(p), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None, None)
            else:
                group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest(), group)
    return out


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def alembic_version(settings) -> str | None:
    from rollback import pg

    return pg.alembic_revision(settings.database)


def capture(settings) -> dict:
    """Everything the restore must bring back, in comparable form."""
    return {
        "schema": schema_dump(settings),
        "rows": row_hashes(settings),
        "tree": tree(settings.data_base_dir),
        "head": git_head(settings.app_repo_dir),
        "alembic": alembic_version(settings),
    }
