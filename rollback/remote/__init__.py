"""Off-site copies of snapshots in S3-compatible storage (BACKUP_REMOTE_URL): the store, upload and
fetch with SHA-256 at both ends, the per-snapshot remote state, listing and retention."""

from .catalog import needing_upload, prune_remote, remote_snapshots, resolve_anywhere, resolve_remote
from .preflight import fetch_if_missing, verify_or_fetch
from .state import describe, read_state, with_remote_state, write_state
from .store import RemoteError, RemoteStore
from .transfer import fetch_snapshot, record_failure, upload_snapshot

__all__ = ["RemoteError", "RemoteStore", "describe", "fetch_if_missing", "fetch_snapshot", "needing_upload",
           "prune_remote", "read_state", "record_failure", "remote_snapshots", "resolve_anywhere", "resolve_remote",
           "upload_snapshot", "verify_or_fetch", "with_remote_state", "write_state"]
