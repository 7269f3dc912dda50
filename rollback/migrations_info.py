"""What the deployed code knows about Alembic revisions, and running its downgrade.

Every reader of the app's migrations goes through here. Reading revisions uses Alembic's
ScriptDirectory in-process (no database, no env.py). The downgrade runs in a child process, with
the deployed code's own env.py, because that code is the only one that knows how to undo its own
migrations; with ALEMBIC_COMMAND it runs in the app's own environment (Flask-Migrate's env.py needs
a Flask app context, which only `flask db` provides).

Two layouts of ALEMBIC_CONFIG are understood: plain Alembic (`script_location` in the ini) and
Flask-Migrate (`migrations/alembic.ini` without `script_location`: the scripts are the ini's folder).
"""

from __future__ import annotations

import sys

from .app_command import app_env, run_app_command
from .errors import ConfigError, RollbackError
from .logbook import mask_secrets
from .proc import child_env
from .settings import Settings


def _ini(settings: Settings):
    from alembic.config import Config

    path = settings.alembic_config
    if not path.is_file():
        hint = ""
        if (settings.app_repo_dir / "migrations" / "alembic.ini").is_file():
            hint = f" (a Flask-Migrate app keeps it in migrations/: ALEMBIC_CONFIG={settings.app_repo_dir}/migrations/alembic.ini)"
        raise ConfigError(f"ALEMBIC_CONFIG: {path} does not exist{hint}")
    return Config(str(path))


def is_flask_migrate_layout(settings: Settings) -> bool:
    """True when the ini names no script_location: Flask-Migrate's `migrations/alembic.ini`."""
    return not _ini(settings).get_main_option("script_location")


def alembic_config(settings: Settings):
    """Alembic's Config for ALEMBIC_CONFIG, with Flask-Migrate's layout filled in."""
    config = _ini(settings)
    if not config.get_main_option("script_location"):
        # Flask-Migrate writes no script_location: its Config points at the ini's folder itself.
        config.set_main_option("script_location", str(settings.alembic_config.parent).replace("%", "%%"))
    return config


def _script_directory(settings: Settings):
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    config = alembic_config(settings)
    try:
        return ScriptDirectory.from_config(config)
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
    except RollbackError:
        raise
    except Exception as exc:  # a broken migration file is an operator problem, say so
        raise RollbackError(f"cannot read the migrations of {settings.alembic_config}: {exc}") from None


def downgrade_argv(settings: Settings, target: str) -> list[str]:
    """The downgrade command line: ALEMBIC_COMMAND's when set, else Alembic under our interpreter."""
    if settings.alembic_command:
        return [*settings.alembic_command, "downgrade", target]
    return [sys.executable, "-m", "alembic", "-c", str(settings.alembic_config), "downgrade", target]


def downgrade(settings: Settings, target_revision: str | None, timeout: float) -> str:
    """Downgrade the protected database to `target_revision` ("base" for an empty schema) with the
    deployed code; return the command that ran (secrets masked). Raise RollbackError with the end of
    the command's output when it fails."""
    target = target_revision or "base"
    argv = downgrade_argv(settings, target)
    if settings.alembic_command:
        # The app's own environment and driver: DATABASE_URL exactly as configured, never rewritten.
        _run_downgrade(argv, "ALEMBIC_COMMAND", cwd=settings.app_repo_dir, env=app_env(settings), timeout=timeout)
    elif is_flask_migrate_layout(settings):
        raise RollbackError(f"{settings.alembic_config} has no script_location (Flask-Migrate's layout): its "
                            f"env.py runs only inside the app (`flask db`), not under this service's Python")
    else:
        # Our interpreter may only have psycopg 3, so the URL names that driver explicitly.
        env = child_env({"DATABASE_URL": settings.database.sqlalchemy_url()})
        _run_downgrade(argv, "alembic", cwd=settings.alembic_config.parent, env=env, timeout=timeout)
    return mask_secrets(" ".join(argv))


def _run_downgrade(argv: list[str], what: str, *, cwd, env: dict[str, str], timeout: float) -> None:
    """Run it with its stdout and stderr kept (Alembic prints `FAILED: ...` on stdout)."""
    result = run_app_command(argv, cwd=cwd, env=env, timeout=timeout)
    if not result.ok:
        raise RollbackError(f"{what} `{result.command}` {result.describe()}")
