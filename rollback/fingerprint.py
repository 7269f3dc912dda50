"""A fingerprint of the live state (schema, rows, data tree, code, Alembic revision).

Operators compare the fingerprint taken before a deploy with the one after a restore to see, in
one line each, that everything is back.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from psycopg import sql

from . import pg
from .proc import output
from .resources.code import strategy_for
from .resources.data_tree import RESERVED_PREFIXES
from .settings import Settings


def schema_digest(settings: Settings) -> str:
    dump = output(["pg_dump", "--schema-only", "--no-owner", "--no-password"], env=settings.database.libpq_env(),
                  timeout=settings.command_timeout_sec)
    # pg_dump >= 15.14 wraps its output in a random \restrict key that is not part of the schema.
    lines = [line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def row_digests(settings: Settings) -> dict[str, str]:
    """md5 of every table's rows in a stable order, keyed schema.table."""
    with pg.connect(settings.database) as conn:
        tables = conn.execute(
            "select schemaname, tablename from pg_tables where schemaname not in ('pg_catalog', "
            "'information_schema') order by 1, 2").fetchall()
        out = {}
        for schema, table in tables:
            query = sql.SQL("select md5(coalesce(string_agg(t::text, '|' order by t::text), '')), count(*) "
                            "from {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
            digest, count = conn.execute(query).fetchone()
            out[f"{schema}.{table}"] = f"{count} rows md5:{digest}"
        return out


def tree_digest(root: Path) -> tuple[str, int]:
    """sha256 over (path, kind, mode, content or link target) of every entry; reserved names skipped."""
    h = hashlib.sha256()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIXES)]
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = _file_sha256(path)
            else:
                body = ""
            h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0{body}\n".encode())
            count += 1
    return h.hexdigest(), count


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(settings: Settings) -> dict:
    tree, entries = tree_digest(settings.data_base_dir)
    revision, dirty = strategy_for(settings).current_revision()
    return {
        "code": revision + (" (dirty)" if dirty else ""),
        "alembic": pg.alembic_revision(settings.database),
        "schema": schema_digest(settings),
        "rows": row_digests(settings),
        "data": f"{entries} entries sha256:{tree}",
    }
