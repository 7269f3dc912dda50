"""The restore's use of the bucket: artifacts that are missing or fail their SHA-256 are fetched from
it before anything is changed, and verified again against the local manifest. The transfer code (and
boto3 with it) is loaded only when the bucket is needed: a restore from local artifacts never pays it."""

from __future__ import annotations

from ..errors import IntegrityError
from ..progress import Progress
from ..settings import Settings
from ..verify import verify_artifacts


def fetch_if_missing(settings: Settings, entry: dict, progress: Progress) -> str | None:
    """Fetch the snapshot when its folder or an artifact is missing or has the wrong size; return a line
    for the preflight detail, or None when nothing was needed (or no remote is configured)."""
    problem = local_problem(settings, entry)
    if problem is None or not settings.remote_url:
        return None
    progress(0, 1, f"{problem}: fetching it from {settings.remote_url}")
    from .transfer import fetch_snapshot

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
        from .transfer import fetch_snapshot

        fetch_snapshot(settings, entry["id"], progress)
        checks = verify_artifacts(settings, entry, progress=progress, scan_data=True)
        return [f"local copy refused ({exc}); fetched from {settings.remote_url}"] + checks


def local_problem(settings: Settings, entry: dict) -> str | None:
    """Why the local artifacts cannot be used as they are (missing folder or file, wrong size), or None.
    Cheap: SHA-256 is the verification's job."""
    folder = settings.backup_dir / entry["id"]
    if not folder.is_dir():
        return f"snapshot folder {folder} is missing"
    for name, art in sorted(entry["artifacts"].items()):
        try:
            size = (folder / art["file"]).stat().st_size
        except FileNotFoundError:
            return f"{name} artifact {art['file']} is missing"
        if size != art["size"]:
            return f"{name} artifact {art['file']} has {size} bytes, {art['size']} recorded"
    return None
