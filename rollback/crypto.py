"""Client-side encryption of artifacts before they leave the machine: AES-256-GCM (`cryptography`),
applied in chunks so a multi-GiB dump is streamed, never held in memory.

The layout is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as age and
Tink's streaming AEAD use it, with AES-GCM as the cipher:

    header  = MAGIC (8 bytes) | chunk size (4 bytes, big-endian) | nonce prefix (8 random bytes)
    chunk i = AESGCM(key).encrypt(nonce = prefix | i (4 bytes), plaintext[i], aad = header | i | last)

`last` is one byte, 1 on the final chunk only (an empty plaintext is one empty final chunk), so
reordering, truncation and appending are all refused by the GCM tag. The key is 32 bytes from
BACKUP_ENCRYPTION_KEY(_FILE); it is never written anywhere (settings hide it from repr), and
errors never include it.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import IntegrityError

MAGIC = b"RBAESGC1"
CHUNK = 1 << 20
TAG = 16
HEADER_BYTES = len(MAGIC) + 4 + 8
ALGORITHM = "AES-256-GCM-STREAM-1MiB"
MAX_CHUNKS = 1 << 32


def encrypted_size(plain_size: int, chunk: int = CHUNK) -> int:
    chunks = max(1, -(-plain_size // chunk))
    return HEADER_BYTES + plain_size + chunks * TAG


class EncryptingReader:
    """A read()-able stream of the ciphertext of `source` (a binary file object), for boto3's
    upload_fileobj; also hashes the plaintext it consumed (`plain_sha256`)."""

    def __init__(self, source, key: bytes, chunk: int = CHUNK):
        self._source, self._aead, self._chunk = source, AESGCM(key), chunk
        self._prefix = os.urandom(8)
        self._header = MAGIC + struct.pack(">I", chunk) + self._prefix
        self._buffer = bytearray(self._header)
        self._index = 0
        self._pending = source.read(chunk)
        self._done = False
        self._plain = hashlib.sha256()

    def _next_chunk(self) -> None:
        current = self._pending
        self._pending = self._source.read(self._chunk) if len(current) == self._chunk else b""
        last = not self._pending
        if self._index >= MAX_CHUNKS:
            raise IntegrityError("artifact too large for one encrypted stream")
        self._plain.update(current)
        counter = struct.pack(">I", self._index)
        aad = self._header + counter + (b"\x01" if last else b"\x00")
        self._buffer += self._aead.encrypt(self._prefix + counter, bytes(current), aad)
        self._index += 1
        self._done = last

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            self._next_chunk()
        size = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    @property
    def plain_sha256(self) -> str:
        return self._plain.hexdigest()


class DecryptingWriter:
    """A write()-able sink that takes ciphertext in order and writes the plaintext to `target`.
    Call close() at the end: it refuses a stream that stopped before its final chunk."""

    def __init__(self, target, key: bytes):
        self._target, self._aead = target, AESGCM(key)
        self._buffer = bytearray()
        self._header: bytes | None = None
        self._chunk = 0
        self._index = 0
        self._finished = False

    def write(self, data) -> int:
        self._buffer += data
        if self._header is None and len(self._buffer) >= HEADER_BYTES:
            header = bytes(self._buffer[:HEADER_BYTES])
            if header[:len(MAGIC)] != MAGIC:
                raise IntegrityError("not an encrypted artifact of this tool (bad header), or encryption is off "
                                     "here but was on when it was uploaded")
            self._header, self._chunk = header, struct.unpack(">I", header[8:12])[0]
            if not 0 < self._chunk <= 64 * CHUNK:
                raise IntegrityError("encrypted artifact has an invalid chunk size")
            del self._buffer[:HEADER_BYTES]
        # Keep one full sealed chunk back: only the end of the stream says which chunk is the last.
        while self._header is not None and len(self._buffer) > self._chunk + TAG:
            self._open(bytes(self._buffer[:self._chunk + TAG]), last=False)
            del self._buffer[:self._chunk + TAG]
        return len(data)

    def _open(self, sealed: bytes, last: bool) -> None:
        if self._finished:
            raise IntegrityError("encrypted artifact has data after its final chunk")
        counter = struct.pack(">I", self._index)
        aad = self._header + counter + (b"\x01" if last else b"\x00")
        try:
            plain = self._aead.decrypt(self._header[12:20] + counter, sealed, aad)
        except InvalidTag:
            raise IntegrityError(f"encrypted artifact fails authentication at chunk {self._index} (altered, "
                                 f"truncated, or sealed with another BACKUP_ENCRYPTION_KEY)") from None
        self._target.write(plain)
        self._index += 1
        self._finished = last

    def close(self) -> None:
        if self._header is None:
            raise IntegrityError("encrypted artifact is shorter than its header")
        if not self._finished:
            self._open(bytes(self._buffer), last=True)
            self._buffer.clear()
