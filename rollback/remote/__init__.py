"""Off-site copies of snapshots in S3-compatible storage (BACKUP_REMOTE_URL): the store, upload and
fetch with SHA-256 at both ends, the per-snapshot remote state, listing and retention.

Only the remote state (a side file per snapshot) is imported eagerly: the CLI's `list`, `show` and
`restore` read it on every run, while boto3 (≈ 0.1 s to import) is loaded on first use of a name
that talks to the bucket (PEP 562 module __getattr__).
"""

import importlib

from .state import describe, read_state, with_remote_state, write_state

_LAZY = {
    "needing_upload": "catalog", "prune_remote": "catalog", "remote_snapshots": "catalog",
    "resolve_anywhere": "catalog", "resolve_remote": "catalog",
    "fetch_if_missing": "preflight", "verify_or_fetch": "preflight",
    "RemoteError": "store", "RemoteStore": "store",
    "fetch_snapshot": "transfer", "record_failure": "transfer", "upload_snapshot": "transfer",
}

__all__ = sorted([*_LAZY, "describe", "read_state", "with_remote_state", "write_state"])


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
