"""The restore's use of the bucket: artifacts that are missing or fail their SHA-256 are fetched from
it before anything is changed, and verified again against the local manifest."""

from __future__ import annotations

from ..errors import IntegrityError
from ..progress import Progress
from ..settings import Settings
from ..verify import verify_artifacts
from .transfer import fetch_snapshot, local_problem


def fetch_if_missing(settings: Settings, entry: dict, progress: Progress) -> str | None:
    """Fetch the snapshot when its folder or an artifact is missing or has the wrong size; return a line
    for the preflight detail, or None when nothing was needed (or no remote is configured)."""
    problem = local_problem(settings, entry)
    if problem is None or not settings.remote_url:
        return None
    progress(0, 1, f"{problem}: fetching it from {settings.remote_url}")
    fetch_snapshot(settings, entry["id"], progress)
    return f"{problem}: fetched from {settings.remote_url}, SHA-256 verified"


def verify_or_fetch(settings: Settings, entry: dict, progress: Progress) -> list[str]:
    """The cold preflight's verification; a local artifact that fails it is replaced by the remote copy
    (itself checked on download), then everything is verified again."""
    try:
        return verify_artifacts(settings, entry, progress=progress, scan_data=True)
    except IntegrityError as exc:
        if not settings.remote_url:
            raise
        progress(0, 1, f"{exc}: fetching the snapshot from {settings.remote_url}")
        fetch_snapshot(settings, entry["id"], progress)
        checks = verify_artifacts(settings, entry, progress=progress, scan_data=True)
        return [f"local copy refused ({exc}); fetched from {settings.remote_url}"] + checks
