"""Typed settings, loaded and validated once from the environment.

Every other module receives a `Settings` explicitly; nothing else reads `os.environ`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from .keys import parse_key
from .errors import ConfigError

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}
CODE_STRATEGIES = ("git", "render")


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the protected database lives, split so the password never reaches argv."""

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)  # settings get printed in tracebacks
    dbname: str
    query: str = ""

    def options(self) -> dict[str, str]:
        """Query parameters of the URL (e.g. sslmode=require on hosted Postgres)."""
        return dict(parse_qsl(self.query))

    def libpq_env(self) -> dict[str, str]:
        """PG* variables for pg_dump/pg_restore/psql: connection details without argv."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": self.dbname}
        if self.password:
            env["PGPASSWORD"] = self.password
        for key, value in self.options().items():
            if key in _LIBPQ_ENV:
                env[_LIBPQ_ENV[key]] = value
        return env

    def conninfo(self, dbname: str | None = None) -> str:
        """A psycopg conninfo string (used in-process only, never logged)."""
        parts = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": dbname or self.dbname}
        if self.password:
            parts["password"] = self.password
        parts.update({k: v for k, v in self.options().items() if k in _LIBPQ_ENV})
        return " ".join(f"{k}='{_escape(v)}'" for k, v in parts.items())

    def sqlalchemy_url(self, dbname: str | None = None) -> str:
        from urllib.parse import quote

        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        query = f"?{self.query}" if self.query else ""
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{dbname or self.dbname}{query}"

    def masked_url(self) -> str:
        pw = ":***" if self.password else ""
        return f"postgresql://{self.user}{pw}@{self.host}:{self.port}/{self.dbname}"


# URL query parameters we pass on to libpq (conninfo keyword -> environment variable).
_LIBPQ_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
              "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS",
              "target_session_attrs": "PGTARGETSESSIONATTRS"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def parse_database_url(url: str) -> DatabaseTarget:
    """Accept postgresql:// and postgresql+psycopg:// URLs; raise ConfigError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or 5432
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL: not a valid URL ({exc})") from None
    if parts.scheme not in _PG_SCHEMES:
        raise ConfigError(f"DATABASE_URL: scheme must be postgresql:// or postgresql+psycopg://, got {parts.scheme or 'none'}://")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ConfigError("DATABASE_URL: the URL must name a database (postgresql://user@host/dbname)")
    return DatabaseTarget(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username) if parts.username else "postgres",
        password=unquote(parts.password) if parts.password is not None else None,
        dbname=dbname,
        query=parts.query,
    )


@dataclass(frozen=True)
class Settings:
    database: DatabaseTarget
    data_base_dir: Path
    backup_dir: Path
    backup_retention: int
    app_repo_dir: Path
    alembic_config: Path
    readyz_url: str
    log_dir: Path
    celery_broker_url: str
    celery_result_backend: str
    ready_timeout_sec: float
    ready_interval_sec: float
    code_rollback_strategy: str = "git"
    gzip_level: int = 1
    backup_codec: str = "zstd"
    db_restore_strategy: str = "swap"
    standby_enabled: bool = True
    restore_jobs: int = 2
    command_timeout_sec: float = 1800.0
    # canary, beat, notifications
    canary_enabled: bool = True
    ready_successes: int = 1
    notify_webhook_url: str | None = None
    prune_schedule: str = "hourly"
    # restore drills: their schedule (None = off) and the /readyz checks they repeat on the restored copy
    drill_schedule: str | None = "daily"
    readyz_tables: tuple[tuple[str, int], ...] = ()
    readyz_users_file: str | None = "users.json"
    pre_retention_days: float = 7.0
    # Render code strategy
    render_api_key: str | None = field(default=None, repr=False)
    render_service_id: str | None = None
    render_api_url: str = "https://api.render.com/v1"
    # Builds Render keeps for rollbacks (Hobby workspace: 5; see docs/deploy-render.md); older commits are rebuilt
    render_build_retention: int = 5
    render_disable_autodeploy_on_rollback: bool = True
    # HMAC over manifest.json (rollback/manifest.py); the key lives outside BACKUP_DIR
    manifest_hmac_key: str | None = field(default=None, repr=False)
    # The protected app's own tools: Alembic in its environment, and how to restart its processes
    alembic_command: tuple[str, ...] | None = None
    app_restart_command: str | None = None
    app_restart_timeout_sec: float = 60.0
    pre_retention_count: int = 3
    # DATABASE_URL exactly as configured (driver included), for the app's own child processes
    database_url: str = field(default="", repr=False)
    # Off-site copies (rollback/remote/): s3://bucket/prefix, its retention, the upload's retries, and
    # the client-side encryption key (32 bytes; never printed, logged or sent to Redis)
    remote_url: str | None = None
    remote_retention: int = 14
    remote_upload_retries: int = 5
    remote_retry_delay_sec: float = 60.0
    encryption_key: bytes | None = field(default=None, repr=False)

    @property
    def remote_bucket(self) -> str:
        return urlsplit(self.remote_url or "").netloc

    @property
    def remote_prefix(self) -> str:
        """The key prefix inside the bucket, '' or ending with '/'."""
        path = urlsplit(self.remote_url or "").path.strip("/")
        return f"{path}/" if path else ""

    @property
    def rollback_log(self) -> Path:
        return self.log_dir / "rollback.log"

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> "Settings":
        """Load and validate; the first invalid variable raises ConfigError naming it."""
        env = os.environ if env is None else env
        cwd = Path(cwd or os.getcwd())
        url = env.get("DATABASE_URL", "").strip()
        if not url:
            raise ConfigError("DATABASE_URL: required (e.g. postgresql://user@127.0.0.1:5432/app)")
        repo = _path(env, "APP_REPO_DIR", None) or _git_toplevel(cwd)
        port = _int(env, "PORT", 5000, minimum=1)
        strategy = env.get("CODE_ROLLBACK_STRATEGY", "git").strip() or "git"
        if strategy not in CODE_STRATEGIES:
            raise ConfigError(f"CODE_ROLLBACK_STRATEGY: must be one of {', '.join(CODE_STRATEGIES)}, got {strategy!r}")
        log_dir = _path(env, "LOG_DIR", Path("logs"))
        render_key = env.get("RENDER_API_KEY", "").strip() or None
        render_service = env.get("RENDER_SERVICE_ID", "").strip() or None
        if strategy == "render" and not (render_key and render_service):
            raise ConfigError("CODE_ROLLBACK_STRATEGY: render needs RENDER_API_KEY and RENDER_SERVICE_ID")
        webhook = env.get("ROLLBACK_NOTIFY_WEBHOOK_URL", "").strip()
        return cls(
            database=parse_database_url(url),
            data_base_dir=_path(env, "DATA_BASE_DIR", Path("/var/data")),
            backup_dir=_path(env, "BACKUP_DIR", Path("/var/tmp/backup")),
            backup_retention=_int(env, "BACKUP_RETENTION", 14, minimum=1),
            app_repo_dir=repo,
            alembic_config=_path(env, "ALEMBIC_CONFIG", None) or repo / "alembic.ini",
            readyz_url=_url(env, "READYZ_URL", f"http://127.0.0.1:{port}/readyz"),
            log_dir=log_dir if log_dir.is_absolute() else cwd / log_dir,
            celery_broker_url=env.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0",
            celery_result_backend=env.get("CELERY_RESULT_BACKEND") or "redis://127.0.0.1:6379/0",
            ready_timeout_sec=_float(env, "ROLLBACK_READY_TIMEOUT_SEC", 90.0),
            ready_interval_sec=_float(env, "ROLLBACK_READY_INTERVAL_SEC", 10.0),
            code_rollback_strategy=strategy,
            gzip_level=_int(env, "BACKUP_GZIP_LEVEL", 1, minimum=1, maximum=9),
            backup_codec=_choice(env, "BACKUP_CODEC", "zstd", ("zstd", "gzip")),
            db_restore_strategy=_choice(env, "DB_RESTORE_STRATEGY", "swap", ("swap", "in-place")),
            standby_enabled=env_bool(env, "ROLLBACK_STANDBY", True),
            restore_jobs=_int(env, "RESTORE_JOBS", os.cpu_count() or 2, minimum=1, maximum=64),
            canary_enabled=env_bool(env, "ROLLBACK_CANARY_ENABLED", True),
            ready_successes=_int(env, "ROLLBACK_READY_SUCCESSES", 1, minimum=1),
            notify_webhook_url=_url(env, "ROLLBACK_NOTIFY_WEBHOOK_URL", webhook) if webhook else None,
            prune_schedule=_schedule(env, "BACKUP_PRUNE_SCHEDULE", "hourly"),
            **_drill(env),
            pre_retention_days=_float(env, "PRE_RETENTION_DAYS", 7.0, allow_zero=True),
            render_api_key=render_key,
            render_service_id=render_service,
            render_api_url=_url(env, "RENDER_API_URL", "https://api.render.com/v1").rstrip("/"),
            render_build_retention=_int(env, "RENDER_BUILD_RETENTION", 5, minimum=1, maximum=1000),
            render_disable_autodeploy_on_rollback=env_bool(env, "RENDER_DISABLE_AUTODEPLOY_ON_ROLLBACK", True),
            manifest_hmac_key=_hmac_key(env),
            alembic_command=_command(env, "ALEMBIC_COMMAND"),
            app_restart_command=env.get("APP_RESTART_COMMAND", "").strip() or None,
            app_restart_timeout_sec=_float(env, "APP_RESTART_TIMEOUT_SEC", 60.0),
            pre_retention_count=_int(env, "PRE_RETENTION_COUNT", 3, minimum=0),
            database_url=url,
            **_remote(env, _int(env, "BACKUP_RETENTION", 14, minimum=1)),
        )


MIN_HMAC_KEY_BYTES = 16


def _command(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """A command line split like a shell would (no shell runs it), e.g.
    '/srv/app/.venv/bin/flask --app microblog db'."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot split {raw!r} into a command line ({exc})") from None
    return argv or None


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")


def _remote(env: Mapping[str, str], retention: int) -> dict:
    """BACKUP_REMOTE_* and the encryption key; credentials and endpoint are boto3's own AWS_* variables."""
    url = env.get("BACKUP_REMOTE_URL", "").strip() or None
    if url:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not _BUCKET.fullmatch(parts.netloc) or parts.query or parts.fragment:
            raise ConfigError(f"BACKUP_REMOTE_URL: must be s3://bucket/prefix with a valid bucket name, got {url!r}")
        url = f"s3://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    return {
        "remote_url": url,
        "remote_retention": _int(env, "BACKUP_REMOTE_RETENTION", retention, minimum=1),
        "remote_upload_retries": _int(env, "BACKUP_REMOTE_UPLOAD_RETRIES", 5, minimum=0, maximum=50),
        "remote_retry_delay_sec": _float(env, "BACKUP_REMOTE_RETRY_DELAY_SEC", 60.0),
        "encryption_key": encryption_key_from_env(env),
    }


def encryption_key_from_env(env: Mapping[str, str]) -> bytes | None:
    text, file = env.get("BACKUP_ENCRYPTION_KEY", "").strip(), env.get("BACKUP_ENCRYPTION_KEY_FILE", "").strip()
    if text and file:
        raise ConfigError("BACKUP_ENCRYPTION_KEY: set it or BACKUP_ENCRYPTION_KEY_FILE, not both")
    if file:
        try:
            text = Path(file).expanduser().read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"BACKUP_ENCRYPTION_KEY_FILE: cannot read {file} "
                              f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        return parse_key(text, "BACKUP_ENCRYPTION_KEY_FILE")
    return parse_key(text, "BACKUP_ENCRYPTION_KEY") if text else None


def _hmac_key(env: Mapping[str, str]) -> str | None:
    key = env.get("MANIFEST_HMAC_KEY", "").strip()
    if key and len(key.encode("utf-8")) < MIN_HMAC_KEY_BYTES:
        raise ConfigError(f"MANIFEST_HMAC_KEY: must be at least {MIN_HMAC_KEY_BYTES} bytes "
                          f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return key or None


def _path(env: Mapping[str, str], name: str, default: Path | None) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if "\x00" in raw:
        raise ConfigError(f"{name}: contains a NUL byte")
    return Path(raw).expanduser()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name}: must be {bound}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number, got {raw!r}") from None
    if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
        raise ConfigError(f"{name}: must be a {'non-negative' if allow_zero else 'positive'} number, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: must be true or false, got {raw!r}")


_SCHEDULE_WORDS = {"hourly", "daily"}


def _schedule(env: Mapping[str, str], name: str, default: str) -> str:
    """'hourly', 'daily', a number of seconds, or a 5-field crontab ('0 * * * *')."""
    raw = " ".join(env.get(name, "").split()) or default
    if raw in _SCHEDULE_WORDS or len(raw.split(" ")) == 5:
        return raw
    try:
        if float(raw) > 0:
            return raw
    except ValueError:
        pass
    raise ConfigError(f"{name}: must be hourly, daily, a number of seconds or a crontab like '0 * * * *', got {raw!r}")


_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")


def drill_schedule(env: Mapping[str, str]) -> str | None:
    """ROLLBACK_DRILL_SCHEDULE: like BACKUP_PRUNE_SCHEDULE (default daily), or `off` (None)."""
    if env.get("ROLLBACK_DRILL_SCHEDULE", "").strip().lower() in ("off", "none", "false"):
        return None
    return _schedule(env, "ROLLBACK_DRILL_SCHEDULE", "daily")


def _drill(env: Mapping[str, str]) -> dict:
    """ROLLBACK_DRILL_SCHEDULE (`off` disables), and READYZ_TABLES / READYZ_USERS_FILE as /readyz reads
    them, for the drill's checks of a restored copy."""
    tables = []
    for item in (part.strip() for part in env.get("READYZ_TABLES", "").split(",")):
        name, _, minimum = item.partition(":")
        if item and (not _TABLE_NAME.fullmatch(name) or (minimum and not minimum.isdigit())):
            raise ConfigError(f"READYZ_TABLES: expected table[:min_rows] (table or schema.table), got {item!r}")
        if item:
            tables.append((name, int(minimum or 0)))
    users = env.get("READYZ_USERS_FILE", "").strip() or "users.json"
    if users.startswith("/") or ".." in users.split("/") or "\x00" in users:
        raise ConfigError(f"READYZ_USERS_FILE: must be a path inside DATA_BASE_DIR, got {users!r}")
    return {"drill_schedule": drill_schedule(env),
            "readyz_tables": tuple(tables), "readyz_users_file": None if users.lower() == "none" else users}


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}: must be an http(s) URL, got {raw!r}")
    return raw


# The same validators, for adapters (web/) that load settings of their own.
env_int, env_float, env_path, env_url, env_schedule = _int, _float, _path, _url, _schedule


def _git_toplevel(cwd: Path) -> Path:
    try:
        out = subprocess.run(
            ["git", "-C", str(cwd), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return cwd
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else cwd
