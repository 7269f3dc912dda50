"""Snapshot and transaction ids: generated from UTC time + a random suffix, validated by one pattern."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from .errors import InvalidSnapshotId

# 20261129T015500Z-3fa9c1: sortable by time, unique enough, safe as a folder name.
SNAPSHOT_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
TXN_ID_RE = re.compile(r"^txn-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
LATEST = "latest"


def _stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def new_snapshot_id(now: datetime | None = None) -> str:
    return f"{_stamp(now)}-{secrets.token_hex(3)}"


def new_txn_id(now: datetime | None = None) -> str:
    return f"txn-{_stamp(now)}-{secrets.token_hex(3)}"


def validate_snapshot_id(value: object, allow_latest: bool = False) -> str:
    """Return the id if it matches the pattern (or is 'latest' when allowed); raise otherwise."""
    if isinstance(value, str):
        if allow_latest and value == LATEST:
            return value
        if SNAPSHOT_ID_RE.fullmatch(value):
            return value
    shown = repr(value)[:80]
    expected = "YYYYMMDDTHHMMSSZ-xxxxxx" + (" or 'latest'" if allow_latest else "")
    raise InvalidSnapshotId(f"invalid snapshot id {shown}: expected {expected}")


def validate_txn_id(value: object) -> str:
    if isinstance(value, str) and TXN_ID_RE.fullmatch(value):
        return value
    raise InvalidSnapshotId(f"invalid transaction id {repr(value)[:80]}: expected txn-YYYYMMDDTHHMMSSZ-xxxxxx")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
