"""A minimal Flask-Migrate app ("microblog") in a git repo: `flask db init`'s real layout
(migrations/alembic.ini without script_location, an env.py that needs `flask.current_app`), two
migrations, and a bad deploy adding a third. Its environment has psycopg2 only: it refuses any
DATABASE_URL that is not `postgresql://` and records the scheme it was given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import git

APP = '''"""microblog: the protected app, in the shape of a Flask-Migrate tutorial app."""
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()


def create_app():
    url = os.environ["DATABASE_URL"]
    trace = os.environ.get("MICROBLOG_URL_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(url.split("://")[0] + "\\n")
    if not url.startswith("postgresql://"):
        raise SystemExit(f"microblog: this environment has psycopg2 only, got {url.split('://')[0]}://")
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db.init_app(app)
    migrate.init_app(app, db)
    return app
'''

MIGRATIONS = {
    "0001_users.py": '''"""users

Revision ID: 0001_users
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001_users"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("user", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("username", sa.String(64), nullable=False, unique=True),
                    sa.Column("email", sa.String(120), nullable=False))


def downgrade():
    op.drop_table("user")
''',
    "0002_posts.py": '''"""posts

Revision ID: 0002_posts
Revises: 0001_users
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_posts"
down_revision = "0001_users"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("post", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("body", sa.String(140)),
                    sa.Column("user_id", sa.Integer, sa.ForeignKey("user.id"), index=True))


def downgrade():
    op.drop_table("post")
''',
}

BAD_MIGRATION = '''"""followers and about_me

Revision ID: 0003_followers
Revises: 0002_posts
"""
import os

from alembic import op
import sqlalchemy as sa

revision = "0003_followers"
down_revision = "0002_posts"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("user", sa.Column("about_me", sa.String(140)))
    op.create_table("followers", sa.Column("follower_id", sa.Integer, sa.ForeignKey("user.id")),
                    sa.Column("followed_id", sa.Integer, sa.ForeignKey("user.id")))


def downgrade():
    trace = os.environ.get("MIGRATION_TRACE_FILE")
    if trace:
        with open(trace, "a") as f:
            f.write("downgrade 0003_followers\\n")
    op.drop_table("followers")
    op.drop_column("user", "about_me")
'''


def flask_db_command(repo: Path) -> list[str]:
    """What an operator puts in ALEMBIC_COMMAND for this app (here: this interpreter's flask)."""
    return [sys.executable, "-m", "flask", "--app", "microblog", "db"]


def flask_db(repo: Path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATABASE_URL=database_url)
    env.pop("MICROBLOG_URL_TRACE", None)
    return subprocess.run([*flask_db_command(repo), *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=True, timeout=120)


def create_repo(repo: Path, database_url: str) -> None:
    """The app, `flask db init`, two migrations, one commit."""
    repo.mkdir()
    (repo / "microblog.py").write_text(APP)
    (repo / ".gitignore").write_text("__pycache__/\n")
    flask_db(repo, database_url, "init")
    for name, text in MIGRATIONS.items():
        (repo / "migrations" / "versions" / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "tests@example.com")
    git(repo, "config", "user.name", "tests")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "microblog v1")


def seed(conn) -> None:
    for i in range(1, 21):
        conn.execute('insert into "user" (username, email) values (%s, %s)', (f"u{i}", f"u{i}@example.com"))
    conn.execute("insert into post (body, user_id) values ('hello', 1), ('again', 2)")


def bad_deploy(repo: Path, database_url: str, conn) -> None:
    """A new commit with migration 0003 applied through `flask db upgrade`, then rows changed."""
    (repo / "migrations" / "versions" / "0003_followers.py").write_text(BAD_MIGRATION)
    (repo / "microblog.py").write_text(APP + "\nBROKEN = True\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bad deploy")
    flask_db(repo, database_url, "upgrade")
    conn.execute("""update "user" set about_me = 'x', username = username || '-changed' where id <= 5""")
    conn.execute("insert into followers values (1, 2)")
    conn.execute("delete from post where id = 2")
