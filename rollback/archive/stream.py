"""Reading a data archive: codec detection, decompression, and a tar stream read strictly once.

Nothing here writes to disk. Decoding problems become IntegrityError; the compressed bytes are
hashed as they are read, so one pass both checks the content and proves which file was checked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from rollback.errors import IntegrityError

CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_MAX_TRAILER = 1 << 20  # GNU tar pads to a 10 KiB record; more zeros than this is not ours

# Codecs of the data archive: gzip (the runbook's .tar.gz) and zstd (multi-threaded, much faster).
CODECS = {"gzip": ".tar.gz", "zstd": ".tar.zst"}
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}

try:
    from zstandard import ZstdError as _ZstdError
except ImportError:  # zstd archives then fail with a clear message in decompressor()
    class _ZstdError(Exception):
        pass

# Everything a decoder may raise on bad input; OSError covers gzip.BadGzipFile and read errors.
_DECODING_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, _ZstdError)


def detect_codec(raw: BinaryIO, label: str) -> str:
    """The codec named by the file's magic bytes; IntegrityError when it is neither."""
    head = raw.read(4)
    raw.seek(0)
    for magic, codec in _MAGIC.items():
        if head.startswith(magic):
            return codec
    raise IntegrityError(f"{label}: not a gzip or zstd archive")


def decompressor(codec: str, raw: BinaryIO) -> BinaryIO:
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        import zstandard
    except ImportError:
        raise IntegrityError("the archive is zstd-compressed but the zstandard package is missing") from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, read_size=CHUNK)


def check_sha256(label: str, actual: str, expected: str) -> None:
    if actual != expected.lower():
        raise IntegrityError(f"{label}: sha256 {actual[:16]}... does not match the expected {expected[:16]}...")


@contextmanager
def decoding(label: str) -> Iterator[None]:
    """Turn a decoder's complaint into IntegrityError naming the archive."""
    try:
        yield
    except _DECODING_ERRORS as exc:
        raise IntegrityError(f"{label}: corrupt archive: {exc}") from exc


class HashingReader:
    """Forward-only reader that hashes every byte taken from the underlying file."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def seek(self, *_args) -> int:
        # A rewind (e.g. gzip after a backward seek) would hash bytes twice.
        raise io.UnsupportedOperation("archive stream is forward-only")

    def drain(self) -> None:
        """Read to EOF: bytes after the compressed stream still count for the hash."""
        while self.read(CHUNK):
            pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class BlockTap:
    """Sits between the decompressor and tarfile and remembers the last block tarfile read.

    tarfile stops silently at an invalid header anywhere after the first member; knowing the
    block it stopped on lets us tell a real end-of-archive marker from garbage or truncation.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.last = b""

    def read(self, size: int = -1) -> bytes:
        self.last = self._stream.read(size)
        return self.last

    def tell(self) -> int:
        return self._stream.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset < self._stream.tell():
            # gzip would rewind and re-read from the start: slow, and it breaks hashing.
            raise io.UnsupportedOperation("archive stream is forward-only")
        return self._stream.seek(offset)


class ArchiveStream:
    """Members of a compressed tar file object, read strictly once from start to end.

    Iterating `members()` to the end also checks the end-of-archive marker and consumes the file
    to EOF, so `sha256`/`size` then cover every byte.
    """

    def __init__(self, raw: BinaryIO, label: str):
        self.label = label
        codec = detect_codec(raw, label)
        self._hashing = HashingReader(raw)
        self._decoded = decompressor(codec, self._hashing)
        self._tap = BlockTap(self._decoded)
        with decoding(label):
            self._tar = tarfile.open(fileobj=self._tap, mode="r:")

    @property
    def sha256(self) -> str:
        return self._hashing.sha256

    @property
    def size(self) -> int:
        return self._hashing.size

    def members(self) -> Iterator[tarfile.TarInfo]:
        while True:
            with decoding(self.label):
                member = self._tar.next()
            if member is None:
                break
            # tarfile keeps every TarInfo for later lookups we never do; keep memory flat.
            self._tar.members.clear()
            yield member
        with decoding(self.label):
            self._check_end()

    def _check_end(self) -> None:
        if self._tap.last != bytes(_BLOCK):
            raise IntegrityError(f"{self.label}: tar data is truncated or has an invalid header")
        trailer = _BLOCK
        while chunk := self._decoded.read(CHUNK):  # reaching the codec's EOF also verifies its checksum
            trailer += len(chunk)
            if chunk.count(0) != len(chunk) or trailer > _MAX_TRAILER:
                raise IntegrityError(f"{self.label}: unexpected data after the end of the archive")
        if trailer < 2 * _BLOCK:  # POSIX: the archive ends with two zero blocks
            raise IntegrityError(f"{self.label}: truncated end-of-archive marker")
        self._hashing.drain()


def measure_archive(path: Path, *, expected_sha256: str) -> int:
    """SHA-256 of the archive's bytes and the size of its decompressed tar stream, in one pass and
    without parsing members (the restore's preflight compares it with the recorded tar_bytes; the
    member policy runs again on extraction). Raises IntegrityError."""
    label = Path(path).name
    with open(path, "rb") as raw:
        codec = detect_codec(raw, label)
        hashing = HashingReader(raw)
        decoded = 0
        with decoding(label):
            stream = decompressor(codec, hashing)
            while chunk := stream.read(CHUNK):
                decoded += len(chunk)
        hashing.drain()
    check_sha256(label, hashing.sha256, expected_sha256)
    return decoded
