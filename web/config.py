"""Settings of the web adapter (readyz checks, console access, API), loaded and validated once.

The core's `Settings` stay the truth for everything the restore needs; this object only holds what
the web process alone uses. Values come from the environment through the core's validators, and an
invalid value raises ConfigError with one line naming the variable.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Mapping

from werkzeug.security import generate_password_hash

from rollback.errors import ConfigError
from rollback.settings import env_bool, env_float, env_int

log = logging.getLogger("web")

LOOPBACK = ("127.0.0.0/8", "::1/128")
MIN_SECRET_KEY = 16
MIN_API_TOKEN = 16
MIN_MASKED_VALUE = 4
MAX_READYZ_DEADLINE = 1.9  # the whole /readyz must answer within 2 s
_TABLE_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HASH_METHODS = ("pbkdf2:", "scrypt:")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TableCheck:
    name: str
    min_rows: int = 0


@dataclass(frozen=True)
class WebConfig:
    # /readyz
    required_env: tuple[str, ...] = ()
    missing_env: tuple[str, ...] = ()
    users_file: str = "users.json"
    tables: tuple[TableCheck, ...] = ()
    readyz_deadline_sec: float = 1.5
    # console and API access
    allowed_networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in LOOPBACK)
    trusted_proxy_hops: int = 0
    admin_user: str | None = None
    admin_password_hash: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    cookie_secure: bool = True
    session_hours: float = 8.0
    api_rate_limit_per_min: int = 60
    login_max_failures: int = 5
    login_window_sec: float = 300.0
    login_failure_delay_sec: float = 0.5
    # Values of READYZ_REQUIRED_ENV, kept only to scrub them from any text we show or log.
    secret_values: tuple[str, ...] = field(default=(), repr=False)

    @property
    def console_enabled(self) -> bool:
        return bool(self.admin_user and self.admin_password_hash)

    def mask(self, text: str) -> str:
        """Replace any value of a required variable that slipped into `text`."""
        for value in self.secret_values:
            text = text.replace(value, "***")
        return text

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "WebConfig":
        """Load and validate; the first invalid variable raises ConfigError naming it."""
        required = _env_names(env, "READYZ_REQUIRED_ENV")
        debug = env_bool(env, "FLASK_DEBUG", False)
        admin_user, password_hash = _admin_credentials(env)
        return cls(
            required_env=required,
            missing_env=tuple(n for n in required if not env.get(n, "").strip()),
            users_file=_users_file(env),
            tables=_tables(env),
            readyz_deadline_sec=_deadline(env),
            allowed_networks=_networks(env),
            trusted_proxy_hops=env_int(env, "TRUSTED_PROXY_HOPS", 0, minimum=0, maximum=10),
            admin_user=admin_user,
            admin_password_hash=password_hash,
            api_token=_api_token(env),
            secret_key=_secret_key(env, needed=admin_user is not None, debug=debug),
            cookie_secure=env_bool(env, "ROLLBACK_COOKIE_SECURE", True),
            session_hours=env_float(env, "ROLLBACK_SESSION_HOURS", 8.0),
            api_rate_limit_per_min=env_int(env, "ROLLBACK_API_RATE_LIMIT", 60, minimum=1),
            login_max_failures=env_int(env, "ROLLBACK_LOGIN_MAX_FAILURES", 5, minimum=1),
            login_window_sec=env_float(env, "ROLLBACK_LOGIN_WINDOW_SEC", 300.0),
            login_failure_delay_sec=env_float(env, "ROLLBACK_LOGIN_FAILURE_DELAY_SEC", 0.5, allow_zero=True),
            secret_values=_secret_values(env, required),
        )


def _csv(env: Mapping[str, str], name: str) -> list[str]:
    return [part.strip() for part in env.get(name, "").split(",") if part.strip()]


def _env_names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    names = _csv(env, name)
    for item in names:
        if not _ENV_NAME_RE.fullmatch(item):
            raise ConfigError(f"{name}: {item!r} is not a variable name")
    return tuple(names)


def _secret_values(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, ...]:
    """Longest first, so a value containing another is masked whole; very short values (a flag like
    "1") would mangle every detail and reveal nothing, so they are left alone."""
    values = {env[n] for n in names if len(env.get(n, "").strip()) >= MIN_MASKED_VALUE}
    return tuple(sorted(values, key=len, reverse=True))


def _users_file(env: Mapping[str, str]) -> str:
    raw = env.get("READYZ_USERS_FILE", "").strip() or "users.json"
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or "\x00" in raw:
        raise ConfigError(f"READYZ_USERS_FILE: must be a path inside DATA_BASE_DIR, got {raw!r}")
    return raw


def _tables(env: Mapping[str, str]) -> tuple[TableCheck, ...]:
    checks = []
    for item in _csv(env, "READYZ_TABLES"):
        name, _, minimum = item.partition(":")
        if not _TABLE_RE.fullmatch(name):
            raise ConfigError(f"READYZ_TABLES: {name!r} is not a table name (table or schema.table)")
        if minimum and not minimum.isdigit():
            raise ConfigError(f"READYZ_TABLES: minimum rows of {name} must be a whole number, got {minimum!r}")
        checks.append(TableCheck(name, int(minimum or 0)))
    return tuple(checks)


def _deadline(env: Mapping[str, str]) -> float:
    value = env_float(env, "READYZ_CHECK_TIMEOUT_SEC", 1.5)
    if value > MAX_READYZ_DEADLINE:
        raise ConfigError(f"READYZ_CHECK_TIMEOUT_SEC: must be at most {MAX_READYZ_DEADLINE} (readyz answers "
                          f"within 2 s), got {value:g}")
    return value


def _networks(env: Mapping[str, str]) -> tuple[Network, ...]:
    items = _csv(env, "ALLOW_ADMIN_ROLLBACK_IPS") or list(LOOPBACK)
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except ValueError as exc:
        raise ConfigError(f"ALLOW_ADMIN_ROLLBACK_IPS: {exc} (expected a comma list of CIDRs)") from None


def _admin_credentials(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(user, password hash); a plain password is hashed at once so both paths check alike."""
    user = env.get("ROLLBACK_ADMIN_USER", "").strip() or None
    password = env.get("ROLLBACK_ADMIN_PASSWORD", "")
    password_hash = env.get("ROLLBACK_ADMIN_PASSWORD_HASH", "").strip()
    if user is None:
        if password or password_hash:
            raise ConfigError("ROLLBACK_ADMIN_USER: required when a console password is set")
        return None, None
    if password and password_hash:
        raise ConfigError("ROLLBACK_ADMIN_PASSWORD_HASH: set either it or ROLLBACK_ADMIN_PASSWORD, not both")
    if password_hash:
        if not password_hash.startswith(_HASH_METHODS) or password_hash.count("$") != 2:
            raise ConfigError("ROLLBACK_ADMIN_PASSWORD_HASH: not a werkzeug.security hash "
                              "(generate_password_hash(...), e.g. 'scrypt:32768:8:1$salt$hex')")
        return user, password_hash
    if not password:
        raise ConfigError("ROLLBACK_ADMIN_PASSWORD: required with ROLLBACK_ADMIN_USER "
                          "(or ROLLBACK_ADMIN_PASSWORD_HASH)")
    return user, generate_password_hash(password)


def _api_token(env: Mapping[str, str]) -> str | None:
    token = env.get("ROLLBACK_API_TOKEN", "").strip() or None
    if token is not None and len(token) < MIN_API_TOKEN:
        raise ConfigError(f"ROLLBACK_API_TOKEN: must be at least {MIN_API_TOKEN} characters")
    return token


def _secret_key(env: Mapping[str, str], needed: bool, debug: bool) -> str | None:
    """SECRET_KEY signs the console session: required once a console login exists, except under
    FLASK_DEBUG, where a per-process key is generated (sessions then end with the process)."""
    key = env.get("SECRET_KEY", "").strip() or None
    if key is not None and len(key) < MIN_SECRET_KEY:
        raise ConfigError(f"SECRET_KEY: must be at least {MIN_SECRET_KEY} characters")
    if key is None and needed:
        if not debug:
            raise ConfigError("SECRET_KEY: required when ROLLBACK_ADMIN_USER is set "
                              "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        log.warning("SECRET_KEY unset under FLASK_DEBUG: using a per-process key")
        key = secrets.token_hex(32)
    return key
