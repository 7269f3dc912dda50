"""What the deployed code knows about Alembic revisions, and running its downgrade.

Reading revisions uses Alembic's ScriptDirectory in-process (no database needed). The downgrade
itself runs in a child process, with the deployed code's own env.py, because that code is the
only one that knows how to undo its own migrations.
"""

from __future__ import annotations

import sys

from .errors import ConfigError, RollbackError
from .proc import run
from .settings import Settings


def _script_directory(settings: Settings):
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    if not settings.alembic_config.is_file():
        raise ConfigError(f"ALEMBIC_CONFIG: {settings.alembic_config} does not exist")
    try:
        return ScriptDirectory.from_config(Config(str(settings.alembic_config)))
    except CommandError as exc:
        raise ConfigError(f"ALEMBIC_CONFIG: {exc}") from None


def code_heads(settings: Settings) -> list[str]:
    return sorted(_script_directory(settings).get_heads())


def is_known_revision(settings: Settings, revision: str | None) -> bool:
    """True for None (an empty schema) and for any revision in the deployed migrations."""
    if revision is None:
        return True
    from alembic.util.exc import CommandError

    try:
        script = _script_directory(settings)
        return all(script.get_revision(rev) is not None for rev in revision.split(","))
    except (CommandError, KeyError, ValueError):
        return False
    except Exception as exc:  # a broken migration file is an operator problem, say so
        raise RollbackError(f"cannot read the migrations of {settings.alembic_config}: {exc}") from None


def downgrade(settings: Settings, target_revision: str | None, timeout: float) -> None:
    """Run `alembic downgrade <target>` with the deployed code, against the protected database."""
    target = target_revision or "base"
    env = {"DATABASE_URL": settings.database.sqlalchemy_url()}
    run([sys.executable, "-m", "alembic", "-c", str(settings.alembic_config), "downgrade", target],
        env=env, cwd=settings.alembic_config.parent, timeout=timeout)
