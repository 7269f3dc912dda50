"""Readiness of the protected Flask app, answered by the app's own process.

Two lines in the app factory, AFTER `db = SQLAlchemy(app)` / `db.init_app(app)` and `Migrate(app, db)`:

    from rollback.flask import init_app
    init_app(app)

This registers `GET /healthz` (200 "ok": the process is up) and `GET /readyz` (200 when every check
passes, else 503) with the JSON body `{"ok": bool, "checks": {name: {"ok", "detail", "ms"}}}`. A URL the
app already serves is left alone (logged through app.logger). Every check runs in a bounded thread pool
and /readyz answers within the deadline even when the database hangs: a stuck check fails, the probe
does not hang. Values of variables and database passwords never appear in the body.

Checks:
- env: every variable of READYZ_REQUIRED_ENV (comma list) is set; only names are shown (NAME=***).
- users_file: DATA_BASE_DIR/READYZ_USERS_FILE (default users.json) is readable, valid JSON;
  READYZ_USERS_FILE=none disables it; without DATA_BASE_DIR it is skipped (and says so).
- database: reachable, and each READYZ_TABLES entry (`table` or `table:min_rows`, comma separated)
  exists with at least min_rows rows. It uses the app's own Flask-SQLAlchemy engine when there is one,
  else an engine made from app.config["SQLALCHEMY_DATABASE_URI"] or DATABASE_URL, as given.
- alembic: the database's alembic_version equals the head(s) of the migrations this process loaded
  in init_app. They are never re-read, so a process still running old code after a restore (or new
  code against an old schema) is not ready. Migrations are found, in order: init_app(migrations_dir=),
  Flask-Migrate's directory (relative to the working directory, as Flask-Migrate does), ALEMBIC_CONFIG
  (its script_location, else the ini's own folder), ./migrations when it holds env.py.
  READYZ_ALEMBIC=off disables the check.

Configuration is read once, in init_app: the variables above plus READYZ_CHECK_TIMEOUT_SEC (overall
deadline, default 1.5, at most 1.9). Keyword arguments of init_app override them: migrations_dir,
required_env, users_file, tables, deadline_sec, url_prefix (default ""). An invalid value fails the
check it belongs to with a one-line detail (the app itself still starts).

Needs Flask and SQLAlchemy only; Alembic is imported inside init_app.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from flask import Flask, Response, current_app, has_app_context, jsonify
from sqlalchemy import text
from sqlalchemy.engine import Engine

from rollback.logbook import mask_secrets
from rollback.readiness import CheckFailed, check_json_file, check_required_env
from rollback.sqlprobe import TableCheck, alembic_revision, check_table, create_engine, db_label, \
    with_connection

EXTENSION_KEY = "rollback_readyz"
DEFAULT_DEADLINE_SEC = 1.5
MAX_DEADLINE_SEC = 1.9  # the whole probe answers within 2 s
MIN_MASKED_VALUE = 4  # shorter values (a flag like "1") would mangle every detail and reveal nothing
NO_MIGRATIONS = ("no migrations found at start-up; call init_app after Migrate(app, db) "
                 "or pass migrations_dir=")
_TABLE_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OFF = {"off", "false", "0", "no"}
_ON = {"", "on", "true", "1", "yes"}

# Shared and bounded: a flood of probes against a hung database cannot pile up threads.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="rollback-readyz")


@dataclass
class ReadyzConfig:
    required_env: tuple[str, ...] = ()
    users_path: Path | None = None
    users_note: str = ""  # the detail when users_path is None
    tables: tuple[TableCheck, ...] = ()
    alembic_enabled: bool = True
    deadline_sec: float = DEFAULT_DEADLINE_SEC
    database_url: str | None = field(default=None, repr=False)
    errors: dict[str, str] = field(default_factory=dict)  # check name -> configuration problem


def init_app(app: Flask, *, migrations_dir: str | os.PathLike | None = None,
             required_env: str | Iterable[str] | None = None, users_file: str | None = None,
             tables: str | Iterable[str] | None = None, deadline_sec: float | None = None,
             url_prefix: str = "") -> "Readiness":
    """Register /healthz and /readyz on `app`; returns the Readiness (also in app.extensions)."""
    config = load_config(os.environ, required_env=required_env, users_file=users_file, tables=tables,
                         deadline_sec=deadline_sec)
    heads, heads_note = (None, "disabled (READYZ_ALEMBIC=off)")
    if config.alembic_enabled:
        heads, heads_note = load_heads(app, migrations_dir)
    readiness = Readiness(app, config, heads, heads_note)
    app.extensions[EXTENSION_KEY] = readiness
    for problem in config.errors.values():
        app.logger.error("rollback readyz: %s", problem)
    app.logger.info("rollback readyz: alembic %s", heads_note)

    def healthz():
        return Response("ok", mimetype="text/plain")

    def readyz():
        ok, checks = readiness.check()
        response = jsonify(ok=ok, checks=checks)
        response.status_code = 200 if ok else 503
        response.headers["Cache-Control"] = "no-store"
        return response

    prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
    taken = {rule.rule for rule in app.url_map.iter_rules()}
    for path, endpoint, view in ((f"{prefix}/healthz", "rollback_healthz", healthz),
                                 (f"{prefix}/readyz", "rollback_readyz", readyz)):
        if path in taken:
            app.logger.warning("rollback readyz: %s is already served by the app; not registering ours", path)
            continue
        app.add_url_rule(path, endpoint=endpoint, view_func=view, methods=["GET"])
    return readiness


# -- configuration ------------------------------------------------------------------------------
def load_config(env, *, required_env=None, users_file=None, tables=None, deadline_sec=None) -> ReadyzConfig:
    config = ReadyzConfig(database_url=env.get("DATABASE_URL") or None)
    _guard(config, "env", lambda: setattr(config, "required_env", _env_names(
        env.get("READYZ_REQUIRED_ENV", "") if required_env is None else required_env)))
    _guard(config, "users_file", lambda: _users_file(config, env, users_file))
    _guard(config, "database", lambda: setattr(config, "tables", _tables(
        env.get("READYZ_TABLES", "") if tables is None else tables)))
    _guard(config, "alembic", lambda: setattr(config, "alembic_enabled", _alembic_switch(env)))
    try:
        config.deadline_sec = _deadline(env, deadline_sec)
    except CheckFailed as exc:  # every check is bounded by it: report it on all of them
        for name in ("env", "users_file", "database", "alembic"):
            config.errors.setdefault(name, str(exc))
    return config


def _guard(config: ReadyzConfig, check: str, parse: Callable[[], None]) -> None:
    try:
        parse()
    except CheckFailed as exc:
        config.errors[check] = str(exc)


def _items(value: str | Iterable[str]) -> list[str]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [p.strip() for p in parts if p.strip()]


def _env_names(value) -> tuple[str, ...]:
    names = _items(value)
    for name in names:
        if not _ENV_NAME_RE.fullmatch(name):
            raise CheckFailed(f"READYZ_REQUIRED_ENV: {name!r} is not a variable name")
    return tuple(names)


def _users_file(config: ReadyzConfig, env, override: str | None) -> None:
    raw = (env.get("READYZ_USERS_FILE", "") if override is None else override).strip() or "users.json"
    if raw.lower() == "none":
        config.users_note = "disabled (READYZ_USERS_FILE=none)"
        return
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or "\x00" in raw:
        raise CheckFailed(f"READYZ_USERS_FILE: must be a path inside DATA_BASE_DIR, got {raw!r}")
    base = env.get("DATA_BASE_DIR", "").strip()
    if not base:
        config.users_note = "skipped (DATA_BASE_DIR not set)"
        return
    config.users_path = Path(base) / raw


def _tables(value) -> tuple[TableCheck, ...]:
    checks = []
    for item in _items(value):
        name, _, minimum = item.partition(":")
        name, minimum = name.strip(), minimum.strip()
        if not _TABLE_RE.fullmatch(name):
            raise CheckFailed(f"READYZ_TABLES: {name!r} is not a table name (table or schema.table)")
        if minimum and not minimum.isdigit():
            raise CheckFailed(f"READYZ_TABLES: minimum rows of {name} must be a whole number, got {minimum!r}")
        checks.append(TableCheck(name, int(minimum or 0)))
    return tuple(checks)


def _alembic_switch(env) -> bool:
    raw = env.get("READYZ_ALEMBIC", "").strip().lower()
    if raw not in _ON | _OFF:
        raise CheckFailed(f"READYZ_ALEMBIC: expected on or off, got {raw!r}")
    return raw not in _OFF


def _deadline(env, override: float | None) -> float:
    raw = env.get("READYZ_CHECK_TIMEOUT_SEC", "").strip() if override is None else str(override)
    try:
        value = float(raw) if raw else DEFAULT_DEADLINE_SEC
    except ValueError:
        raise CheckFailed(f"READYZ_CHECK_TIMEOUT_SEC: not a number: {raw!r}") from None
    if not 0 < value <= MAX_DEADLINE_SEC:
        raise CheckFailed(f"READYZ_CHECK_TIMEOUT_SEC: must be above 0 and at most {MAX_DEADLINE_SEC} "
                          f"(readyz answers within 2 s), got {value:g}")
    return value


# -- the migrations this process started with ---------------------------------------------------
def load_heads(app: Flask, migrations_dir) -> tuple[list[str] | None, str]:
    """(sorted heads, where they came from), or (None, why there are none). Read once, at start-up."""
    location = _locate_migrations(app, migrations_dir)
    if location is None:
        return None, NO_MIGRATIONS
    kind, path = location
    try:
        from alembic.config import Config
        from alembic.script import ScriptDirectory
    except ImportError:
        return None, "alembic is not installed in this environment; cannot read the migrations"
    try:
        if kind == "ini":
            if not path.is_file():
                return None, f"ALEMBIC_CONFIG: {path} does not exist"
            config = Config(str(path))
            if not config.get_main_option("script_location"):  # Flask-Migrate's layout
                config.set_main_option("script_location", str(path.parent).replace("%", "%%"))
        else:
            if not path.is_dir():
                return None, f"migrations directory {path} does not exist"
            config = Config(str(path / "alembic.ini"))  # as Flask-Migrate does; a missing ini is fine
            config.set_main_option("script_location", str(path).replace("%", "%%"))
        heads = sorted(ScriptDirectory.from_config(config).get_heads())
    except Exception as exc:  # a broken migration file: the check says so, the app still starts
        return None, f"cannot read the migrations at {path}: {type(exc).__name__}: {exc}"
    return heads, f"heads {','.join(heads) or 'none'} loaded at start-up from {path}"


def _locate_migrations(app: Flask, explicit) -> tuple[str, Path] | None:
    if explicit:
        path = Path(explicit).absolute()
        return ("ini" if path.suffix == ".ini" else "dir"), path
    migrate = app.extensions.get("migrate")
    if migrate is not None and getattr(migrate, "directory", None):
        return "dir", Path(str(migrate.directory)).absolute()
    ini = os.environ.get("ALEMBIC_CONFIG", "").strip()
    if ini:
        return "ini", Path(ini).absolute()
    if (Path("migrations") / "env.py").is_file():
        return "dir", Path("migrations").absolute()
    return None


# -- the checks ---------------------------------------------------------------------------------
class Readiness:
    """The checks of one app; `check()` runs them within the deadline."""

    def __init__(self, app: Flask, config: ReadyzConfig, heads: list[str] | None, heads_note: str):
        self.app = app
        self.config = config
        self.heads = heads
        self.heads_note = heads_note
        self._own_engine: Engine | None = None
        self._lock = threading.Lock()
        self._in_flight: dict[str, tuple[float, Future]] = {}

    def check(self) -> tuple[bool, dict[str, dict]]:
        """(ok, {name: {"ok", "detail", "ms"}}); never takes longer than the deadline."""
        engine = self._engine_or_error()
        checks: dict[str, Callable[[], str]] = {
            "env": self.check_env,
            "users_file": self.check_users_file,
            "database": lambda: self.check_database(engine),
            "alembic": lambda: self.check_alembic(engine),
        }
        results = self._run_with_deadline(checks)
        secrets = self._secret_values(engine)
        for result in results.values():
            detail = mask_secrets(result["detail"])
            for value in secrets:
                detail = detail.replace(value, "***")
            result["detail"] = detail
        return all(r["ok"] for r in results.values()), results

    def _run_with_deadline(self, checks: dict[str, Callable[[], str]]) -> dict[str, dict]:
        deadline = self.config.deadline_sec
        started = time.monotonic()
        futures: dict[str, Future] = {}
        results: dict[str, dict] = {}
        with self._lock:
            for name, fn in checks.items():
                if name in self.config.errors:
                    results[name] = {"ok": False, "detail": self.config.errors[name], "ms": 0.0}
                    continue
                since, running = self._in_flight.get(name, (started, None))
                if running is not None and not running.done():
                    # One thread per check at most: a hung database cannot pile up threads. A run
                    # younger than the deadline is shared; an older one is stuck, say so.
                    if started - since > deadline:
                        results[name] = {"ok": False, "ms": 0.0, "detail": "an earlier run of this check is "
                                         f"still waiting after {started - since:.1f} s"}
                        continue
                    futures[name] = running
                    continue
                futures[name] = _POOL.submit(_timed, fn)
                self._in_flight[name] = (started, futures[name])
        wait(futures.values(), timeout=max(0.0, deadline - (time.monotonic() - started)))
        for name, future in futures.items():
            if future.done():
                results[name] = dict(future.result())
            else:
                results[name] = {"ok": False, "detail": f"timed out after {deadline:g} s", "ms": _ms(started)}
        return {name: results[name] for name in checks}

    # env / users_file
    def check_env(self) -> str:
        names = self.config.required_env
        return check_required_env(names, [n for n in names if not os.environ.get(n, "").strip()])

    def check_users_file(self) -> str:
        if self.config.users_path is None:
            return self.config.users_note
        return check_json_file(self.config.users_path)

    # database / alembic
    def check_database(self, engine) -> str:
        def probe(conn) -> str:
            conn.execute(text("select 1"))
            for table in self.config.tables:
                check_table(conn, table)
            return ", ".join(f"{t.name}>={t.min_rows}" for t in self.config.tables) \
                or "no tables configured (READYZ_TABLES)"
        return f"database {db_label(engine)} reachable; {with_connection(engine, probe)}"

    def check_alembic(self, engine) -> str:
        if not self.config.alembic_enabled:
            return self.heads_note
        if self.heads is None:
            raise CheckFailed(self.heads_note)
        at = with_connection(engine, alembic_revision)
        head = ",".join(self.heads) or None
        if at != head:
            raise CheckFailed(f"database at {at}, but this process loaded head {head} at start-up "
                              "(code and schema differ: restart or redeploy)")
        return f"database at {at}, head loaded at start-up {head}"

    def _engine_or_error(self):
        """The app's own Flask-SQLAlchemy engine, else one made here once; or the error saying why not."""
        try:
            extension = self.app.extensions.get("sqlalchemy")
            if extension is not None:
                db = getattr(extension, "db", extension)  # Flask-SQLAlchemy 2.x keeps a state object
                if has_app_context() and current_app._get_current_object() is self.app:
                    return _flask_sqlalchemy_engine(db, self.app)
                with self.app.app_context():
                    return _flask_sqlalchemy_engine(db, self.app)
            with self._lock:
                if self._own_engine is None:
                    url = self.app.config.get("SQLALCHEMY_DATABASE_URI") or self.config.database_url
                    if not url:
                        raise CheckFailed("no database configured (Flask-SQLAlchemy, "
                                          "SQLALCHEMY_DATABASE_URI or DATABASE_URL)")
                    self._own_engine = create_engine(str(url))
                return self._own_engine
        except CheckFailed as exc:
            return exc
        except Exception as exc:  # a bad URL or a missing driver: the database checks report it
            return CheckFailed(f"cannot create the database engine: {type(exc).__name__}: {exc}")

    def _secret_values(self, engine) -> list[str]:
        values = {os.environ.get(n, "") for n in self.config.required_env}
        if isinstance(engine, Engine) and engine.url.password:
            values.add(str(engine.url.password))
        return sorted((v for v in values if len(v.strip()) >= MIN_MASKED_VALUE), key=len, reverse=True)


def _flask_sqlalchemy_engine(db, app: Flask):
    try:
        return db.engine  # Flask-SQLAlchemy 3.x (and 2.x's property), inside an app context
    except AttributeError:
        return db.get_engine(app)


def _timed(fn: Callable[[], str]) -> dict:
    started = time.monotonic()
    try:
        ok, detail = True, fn()
    except CheckFailed as exc:
        ok, detail = False, str(exc)
    except Exception as exc:  # a check must report, never crash the probe
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": ok, "detail": detail, "ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
