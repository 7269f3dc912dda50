"""The bad deploys of these tests, done as a deploy does them: a new commit in the checkout, the real
`flask db upgrade`, the app reloaded (SIGHUP), and whatever the new code does to the data directory."""

from __future__ import annotations

import json

from tests.app_e2e.blog_app import BlogApp, commit

V1_HEAD = "9a7f3b5c2e14"

# A downgrade leaves a trace naming the Flask app and the driver it ran with, so a test can tell that it
# ran through ALEMBIC_COMMAND (Flask-Migrate's env.py needs the app) with DATABASE_URL as configured.
_TRACE = '''

def _trace(what):
    import os
    from flask import current_app
    path = os.environ.get("MIGRATION_TRACE_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} app={current_app.import_name} driver={op.get_bind().dialect.driver}\\n")
'''

RENAME_MIGRATION = '''"""rename users.name to display_name, shout it

Revision ID: c2e8f0a4d6b3
Revises: 9a7f3b5c2e14
Create Date: 2026-03-01 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c2e8f0a4d6b3'
down_revision = '9a7f3b5c2e14'
branch_labels = None
depends_on = None
''' + _TRACE + '''

def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('name', new_column_name='display_name')
    op.execute("update users set display_name = upper(display_name)")


def downgrade():
    _trace("downgrade c2e8f0a4d6b3")
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('display_name', new_column_name='name')
'''

TITLES_MIGRATION = '''"""normalize post titles

Revision ID: 5b2d7e9c1f38
Revises: 9a7f3b5c2e14
Create Date: 2026-03-02 16:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5b2d7e9c1f38'
down_revision = '9a7f3b5c2e14'
branch_labels = None
depends_on = None
''' + _TRACE + '''

def upgrade():
    op.execute("update posts set title = lower(replace(title, ' ', '-'))")


def downgrade():
    # The old titles are gone: nothing to undo here (a restore brings the rows back).
    _trace("downgrade 5b2d7e9c1f38")
'''


def _edit(app: BlogApp, path: str, old: str, new: str) -> None:
    file = app.repo / path
    text = file.read_text()
    assert old in text, f"{path} does not contain {old!r}"
    file.write_text(text.replace(old, new))


def deploy_rename_and_damage_data(app: BlogApp) -> str:
    """Caught by readiness: users.name becomes display_name (rows rewritten), the code follows, and the
    new code writes garbage into users.json and replaces an upload, deleting another."""
    _edit(app, "blog/models.py", "    name = db.Column(", "    display_name = db.Column(")
    _edit(app, "blog/templates/index.html", "post.author.name", "post.author.display_name")
    _edit(app, "blog/templates/user.html", "user.name", "user.display_name")
    (app.repo / "migrations/versions/c2e8f0a4d6b3_rename_user_name_to_display_name.py").write_text(RENAME_MIGRATION)
    revision = commit(app.repo, "v2: display names")
    app.flask("db", "upgrade")
    app.reload()
    (app.data_dir / "users.json").write_text('{"users": [{"id": 1, "display_name": ')  # cut off mid-write
    (app.data_dir / "uploads" / "avatar-aiko.png").write_bytes(b"not a png any more")
    (app.data_dir / "uploads" / "notes" / "kyoto.txt").unlink()
    return revision


def deploy_wrong_pages(app: BlogApp) -> str:
    """Not caught by readiness: schema and data dir are fine, but the index shows authors' e-mail
    addresses instead of their names, /users/<id> shows the next user, and a migration has rewritten
    every post title."""
    _edit(app, "blog/templates/index.html", "{{ post.author.name }}", "{{ post.author.email }}")
    _edit(app, "blog/views.py", "db.session.get(User, user_id)", "db.session.get(User, user_id + 1)")
    (app.repo / "migrations/versions/5b2d7e9c1f38_normalize_post_titles.py").write_text(TITLES_MIGRATION)
    revision = commit(app.repo, "v2: tidy titles")
    app.flask("db", "upgrade")
    app.reload()
    json.loads((app.data_dir / "users.json").read_text())  # still valid: readiness has nothing to object to
    return revision
