"""The data archive: create it (create.py), read and decode it (stream.py), decide which members a
restore may write (policy.py, pure), and extract it with GNU tar after that check (extract.py)."""

from .create import DEFAULT_EXCLUDES, ArchiveInfo, create_archive
from .extract import extract_archive, remove_tree, scan_archive
from .policy import MAX_DEPTH
from .stream import CODECS, measure_archive

__all__ = [
    "CODECS",
    "DEFAULT_EXCLUDES",
    "MAX_DEPTH",
    "ArchiveInfo",
    "create_archive",
    "extract_archive",
    "measure_archive",
    "remove_tree",
    "scan_archive",
]
