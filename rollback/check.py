"""`check`: the whole configuration validated against the live system, before a deploy needs it.

Each check gives one `Result` (ok, warn or fail) with a one-line detail that never holds a secret.
A check that crashes is a failed check, never a hidden one. Framework-free: the CLI prints the
results, and the worker runs them for the deploy hook (the worker is where snapshots are taken).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import migrations_info, pg, remote
from .app_command import app_env
from .archive import DEFAULT_EXCLUDES
from .keys import key_id
from .errors import RollbackError
from .http_probe import fetch
from .logbook import mask_secrets
from .manifest import Manifest
from .proc import run
from .resources.code import strategy_for
from .settings import Settings

OK, WARN, FAIL = "ok", "warn", "fail"
READYZ_TIMEOUT_SEC = 5.0
ALEMBIC_COMMAND_TIMEOUT_SEC = 60.0
TOOL_TIMEOUT_SEC = 15.0
# Walking a huge data dir is the snapshot's job; the check looks at what it can in a few seconds.
DATA_SCAN_MAX_ENTRIES = 200_000
DATA_SCAN_MAX_SEC = 5.0
_FLASK_ENV = re.compile(r"^\s*(from\s+flask\b|import\s+flask\b)|\bcurrent_app\b", re.M)
_REVISION = re.compile(r"^([0-9A-Za-z_]+)\b")


@dataclass(frozen=True)
class Result:
    name: str
    level: str  # ok | warn | fail
    detail: str

    @property
    def ok(self) -> bool:
        return self.level != FAIL

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "level": self.level, "detail": self.detail}


def format_line(result: dict) -> str:
    """`ok|FAIL|warn  <name>  <detail>`, the CLI's line for one check."""
    word = {OK: "ok", WARN: "warn", FAIL: "FAIL"}[result["level"]]
    return f"{word:<4}  {result['name']:<16}  {result['detail']}"


class _Facts:
    """What one check learned and a later one needs (the server version, the database revision ...)."""

    def __init__(self) -> None:
        self.server_major: int | None = None
        self.db_size: int | None = None
        self.db_revision: str | None = None
        self.db_revision_read = False
        self.data_bytes: int | None = None


Check = Callable[[Settings, _Facts], tuple[str, str]]


def run_checks(settings: Settings) -> list[Result]:
    facts = _Facts()
    results = []
    for name, check in CHECKS:
        try:
            level, detail = check(settings, facts)
        except RollbackError as exc:
            level, detail = FAIL, str(exc)
        except Exception as exc:  # a crashing check is a failed check, and must not hide the others
            level, detail = FAIL, f"{type(exc).__name__}: {exc}"
        results.append(Result(name, level, mask_secrets(" ".join(detail.split()))))
    return results


# -- database and tools --------------------------------------------------------------------------
def check_database(settings: Settings, facts: _Facts) -> tuple[str, str]:
    """Reachable, and the user may create and rename databases (the db step does both)."""
    with pg.connect(settings.database) as conn:
        row = conn.execute(
            "select r.rolsuper, r.rolcreatedb, pg_get_userbyid(d.datdba),"
            " pg_has_role(current_user, d.datdba, 'MEMBER'), current_setting('server_version_num')::int,"
            " current_setting('server_version'), pg_database_size(d.oid)"
            " from pg_roles r, pg_database d where r.rolname = current_user and d.datname = current_database()"
        ).fetchone()
    superuser, createdb, owner, owns, version_num, version, size = row
    facts.server_major, facts.db_size = version_num // 10000, size
    where = f"{settings.database.masked_url()} (PostgreSQL {version.split()[0]})"
    user = settings.database.user
    if superuser:
        return OK, f"{where}: reachable; {user} is a superuser"
    problems = []
    if not createdb:
        problems.append(f"{user} lacks CREATEDB (ALTER ROLE {user} CREATEDB)")
    if not owns:
        problems.append(f"database {settings.database.dbname} is owned by {owner}, not by {user}")
    if problems:
        return FAIL, f"{where}: reachable, but the restore's db step needs: " + "; ".join(problems)
    return OK, f"{where}: reachable; {user} has CREATEDB and owns {settings.database.dbname}"


def _check_tool(tool: str) -> Check:
    def check(settings: Settings, facts: _Facts) -> tuple[str, str]:
        path = shutil.which(tool)
        if path is None:
            return FAIL, f"{tool} not found on PATH (install postgresql-client of the server's major version)"
        text = run([path, "--version"], timeout=TOOL_TIMEOUT_SEC).stdout.decode("utf-8", "replace").strip()
        match = re.search(r"\)\s*(\d+)(?:\.(\d+))?", text)
        if not match:
            return WARN, f"{path}: cannot read its version from {text[:80]!r}"
        major = int(match.group(1))
        version = match.group(0).lstrip(") ").strip()
        if facts.server_major is None:
            return WARN, f"{tool} {version} at {path}; server version unknown (database unreachable)"
        if major < facts.server_major:
            return FAIL, (f"{tool} {version} at {path} is older than the server ({facts.server_major}); "
                          f"it cannot dump or restore it: install postgresql-client-{facts.server_major}")
        return OK, f"{tool} {version} at {path} (server {facts.server_major})"
    return check


# -- migrations ------------------------------------------------------------------------------------
def check_migrations(settings: Settings, facts: _Facts) -> tuple[str, str]:
    heads = migrations_info.code_heads(settings)
    return OK, f"{settings.alembic_config}: head {', '.join(heads) or '(no revisions)'}"


def check_alembic_revision(settings: Settings, facts: _Facts) -> tuple[str, str]:
    revision = pg.alembic_revision(settings.database)
    facts.db_revision, facts.db_revision_read = revision, True
    if revision is None:
        return OK, "the database has no Alembic revision (empty schema)"
    if not migrations_info.is_known_revision(settings, revision):
        return FAIL, (f"the database is at {revision}, unknown to the migrations of {settings.alembic_config}: "
                      f"a snapshot would record a revision no restore accepts (deploy code that has it, "
                      f"or fix ALEMBIC_CONFIG)")
    heads = migrations_info.code_heads(settings)
    at_head = set(revision.split(",")) == set(heads)
    return OK, f"the database is at {revision}" + (" (the head)" if at_head else f" (head: {', '.join(heads)})")


def check_alembic_command(settings: Settings, facts: _Facts) -> tuple[str, str]:
    """In-place restores run the downgrade with the app's own tools: they must be there and agree."""
    command = settings.alembic_command
    if command is None:
        if settings.db_restore_strategy != "in-place":
            return OK, "not set (not needed: DB_RESTORE_STRATEGY=swap restores without a downgrade)"
        env_py = _env_py(settings)
        flask_env = env_py is not None and _FLASK_ENV.search(env_py.read_text(errors="replace")) is not None
        if flask_env or migrations_info.is_flask_migrate_layout(settings):
            return FAIL, (f"{env_py or settings.alembic_config} belongs to Flask-Migrate: the in-place downgrade "
                          f"needs the app's environment; set ALEMBIC_COMMAND (e.g. "
                          f"'/srv/app/.venv/bin/flask --app app db')")
        return OK, "not set: the in-place downgrade runs `python -m alembic` with this interpreter"
    program = _resolve_program(command[0], settings.app_repo_dir)
    if program is None:
        return FAIL, f"{command[0]} not found (ALEMBIC_COMMAND: {' '.join(command)})"
    current = _revisions(_alembic(settings, command, "current"))
    heads = _revisions(_alembic(settings, command, "heads"))
    if not facts.db_revision_read:
        facts.db_revision = pg.alembic_revision(settings.database)
    wanted = set((facts.db_revision or "").split(",")) - {""}
    if current != wanted:
        return FAIL, (f"`{command[0]} current` reports {', '.join(sorted(current)) or 'no revision'} but the "
                      f"database holds {', '.join(sorted(wanted)) or 'none'}: does it use DATABASE_URL?")
    code = set(migrations_info.code_heads(settings))
    if heads != code:
        return FAIL, (f"`{command[0]} heads` reports {', '.join(sorted(heads))} but {settings.alembic_config} "
                      f"has {', '.join(sorted(code))}: they read different migrations")
    return OK, f"{program}: current {', '.join(sorted(current)) or '(none)'}, heads {', '.join(sorted(heads))}"


def _env_py(settings: Settings) -> Path | None:
    path = Path(migrations_info._script_directory(settings).dir) / "env.py"
    return path if path.is_file() else None


def _alembic(settings: Settings, command: tuple[str, ...], verb: str) -> str:
    done = run([*command, verb], env=app_env(settings), cwd=settings.app_repo_dir, timeout=ALEMBIC_COMMAND_TIMEOUT_SEC)
    return done.stdout.decode("utf-8", "replace")


def _revisions(text: str) -> set[str]:
    found = (_REVISION.match(line.strip()) for line in text.splitlines())
    return {m.group(1) for m in found if m and m.group(1) not in ("INFO", "WARNING", "WARN", "DEBUG")}


def _resolve_program(word: str, cwd: Path) -> str | None:
    if "/" in word:
        path = Path(word) if Path(word).is_absolute() else cwd / word
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(word)


# -- code, data, backups ------------------------------------------------------------------------------
def check_code(settings: Settings, facts: _Facts) -> tuple[str, str]:
    """A snapshot records only the commit: uncommitted changes would not come back with a restore."""
    revision, dirty = strategy_for(settings).current_revision()
    if settings.code_rollback_strategy == "render":
        return OK, f"Render service {settings.render_service_id}: live deploy of {revision[:12]}"
    if dirty:
        changed = run(["git", "-C", str(settings.app_repo_dir), "status", "--porcelain", "--untracked-files=no"],
                      timeout=TOOL_TIMEOUT_SEC).stdout.decode("utf-8", "replace").splitlines()
        names = ", ".join(line[3:] for line in changed[:3]) + (" ..." if len(changed) > 3 else "")
        return FAIL, (f"{settings.app_repo_dir} at {revision[:12]} has uncommitted changes to tracked files "
                      f"({names}): a snapshot records only the commit, so a restore would not bring them back; "
                      f"commit or discard them")
    return OK, f"{settings.app_repo_dir}: git checkout at {revision[:12]}, no uncommitted changes"


def check_data_dir(settings: Settings, facts: _Facts) -> tuple[str, str]:
    root = settings.data_base_dir
    if not root.is_dir():
        return FAIL, f"DATA_BASE_DIR {root} is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return FAIL, f"DATA_BASE_DIR {root} is not readable by this user"
    problems, entries, total, complete = _scan_tree(root)
    facts.data_bytes = total
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return FAIL, (f"{root}: a snapshot would refuse {'; '.join(problems[:3])}{more}: remove or replace "
                      f"these entries")
    scope = "" if complete else f" (first {entries} entries checked; the snapshot checks all)"
    return OK, f"{root}: {entries} entries, {_mib(total)}, archivable{scope}"


def _scan_tree(root: Path) -> tuple[list[str], int, int, bool]:
    """(problems, entries seen, bytes of regular files, whether the whole tree was seen)."""
    problems: list[str] = []
    entries = total = 0
    deadline = time.monotonic() + DATA_SCAN_MAX_SEC
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            children = list(os.scandir(folder))
        except OSError as exc:
            problems.append(f"{_rel(root, folder)}: unreadable ({exc.strerror})")
            continue
        for child in children:
            if folder == root and any(fnmatch.fnmatch(child.name, p) for p in DEFAULT_EXCLUDES):
                continue
            entries += 1
            if entries > DATA_SCAN_MAX_ENTRIES or time.monotonic() > deadline:
                return problems, entries - 1, total, False
            problem, size = _entry_problem(root, Path(child.path))
            total += size
            if problem:
                problems.append(problem)
            elif child.is_dir(follow_symlinks=False):
                stack.append(Path(child.path))
    return problems, entries, total, True


def _entry_problem(root: Path, path: Path) -> tuple[str | None, int]:
    st = path.lstat()
    rel, mode = _rel(root, path), st.st_mode
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        inside = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
            return f"{rel}: symlink to {target} outside the data directory", 0
        return None, 0
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return f"{rel}: a device, FIFO or socket", 0
    if mode & stat.S_ISUID or (mode & stat.S_ISGID and not stat.S_ISDIR(mode)):
        return f"{rel}: set-user/group-ID mode {oct(stat.S_IMODE(mode))}", 0
    if not os.access(path, os.R_OK):
        return f"{rel}: unreadable", 0
    return None, st.st_size if stat.S_ISREG(mode) else 0


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root)) if path != root else "."


def check_backup_dir(settings: Settings, facts: _Facts) -> tuple[str, str]:
    backup = settings.backup_dir
    existing = backup
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return FAIL, f"BACKUP_DIR {backup}: {existing} is not a directory"
    if existing == backup:
        probe = backup / f".check-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return FAIL, f"BACKUP_DIR {backup} is not writable ({exc.strerror})"
    elif not os.access(existing, os.W_OK | os.X_OK):
        return FAIL, f"BACKUP_DIR {backup} cannot be created: {existing} is not writable"
    free = shutil.disk_usage(existing).free
    needed, basis = _room_needed(settings, facts)
    where = f"BACKUP_DIR {backup}" + ("" if existing == backup else " (created on first snapshot)")
    if needed is not None and free < needed:
        return FAIL, f"{where}: {_mib(free)} free, a snapshot needs about {_mib(needed)} ({basis})"
    room = f", about {_mib(needed)} needed ({basis})" if needed is not None else ""
    return OK, f"{where}: writable, {_mib(free)} free{room}"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < (10 << 20) else f"{n >> 20} MiB"


def _room_needed(settings: Settings, facts: _Facts) -> tuple[int | None, str]:
    try:
        entries = Manifest.for_settings(settings).entries()
    except RollbackError:
        entries = []
    if entries:
        art = entries[-1]["artifacts"]
        return 2 * (art["db"]["size"] + art["data"]["size"]), "twice the last snapshot"
    if facts.db_size is not None and facts.data_bytes is not None:
        return facts.db_size + facts.data_bytes, "database + data directory, uncompressed"
    return None, ""


def check_remote(settings: Settings, facts: _Facts) -> tuple[str, str]:
    """The bucket answers and lets us list (BACKUP_REMOTE_URL); says whether copies are encrypted."""
    if not settings.remote_url:
        return WARN, "BACKUP_REMOTE_URL not set: snapshots live only in BACKUP_DIR, on the disk they protect"
    line = remote.RemoteStore(settings).probe()
    sealed = f"encrypted (key id {key_id(settings.encryption_key)})" if settings.encryption_key else "not encrypted"
    return OK, f"{line}; copies {sealed}, retention {settings.remote_retention}"


# -- the app ----------------------------------------------------------------------------------------
def probe_readyz(url: str, timeout: float = READYZ_TIMEOUT_SEC) -> dict:
    """One GET of READYZ_URL: {"url", "ready", "http_status", "checks", "body", "error", "ms"}."""
    started = time.monotonic()
    status, raw, error = fetch(url, timeout, max_body=65536)
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    checks = body.get("checks") if isinstance(body, dict) and isinstance(body.get("checks"), dict) else None
    return {"url": mask_secrets(url), "ready": status == 200, "http_status": status, "checks": checks,
            "body": mask_secrets(" ".join(text.split())[:200]), "error": error,
            "ms": round((time.monotonic() - started) * 1000, 1)}


def check_readyz(settings: Settings, facts: _Facts) -> tuple[str, str]:
    report = probe_readyz(settings.readyz_url)
    if report["error"]:
        return FAIL, f"{report['url']}: {report['error']}"
    if not report["ready"]:
        return FAIL, f"{report['url']}: HTTP {report['http_status']}: {report['body'] or '(empty body)'}"
    return OK, f"{report['url']}: HTTP 200 in {report['ms']:.0f} ms"


def check_app_restart(settings: Settings, facts: _Facts) -> tuple[str, str]:
    raw = settings.app_restart_command
    if not raw:
        if settings.code_rollback_strategy == "render":
            return OK, "not set (not needed: Render restarts the service on its rollback deploy)"
        return WARN, "not set: after a restore the app keeps running the replaced code"
    try:
        words = shlex.split(raw)
    except ValueError as exc:
        return FAIL, f"APP_RESTART_COMMAND: cannot be split into words ({exc})"
    # Leading VAR=value assignments and `exec` are the shell's, not the program.
    while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] == "exec"):
        words.pop(0)
    if not words:
        return FAIL, "APP_RESTART_COMMAND names no program"
    program = _resolve_program(words[0], settings.app_repo_dir)
    if program is None:
        return FAIL, f"APP_RESTART_COMMAND: {words[0]} not found (not on PATH, or not an executable file)"
    return OK, f"{program} (timeout {settings.app_restart_timeout_sec:g} s)"


CHECKS: tuple[tuple[str, Check], ...] = (
    ("database", check_database),
    ("pg_dump", _check_tool("pg_dump")),
    ("pg_restore", _check_tool("pg_restore")),
    ("migrations", check_migrations),
    ("alembic_revision", check_alembic_revision),
    ("alembic_command", check_alembic_command),
    ("code", check_code),
    ("data_dir", check_data_dir),
    ("backup_dir", check_backup_dir),
    ("remote", check_remote),
    ("readyz", check_readyz),
    ("app_restart", check_app_restart),
)
