"""The encryption key's own rules, apart from the cipher: parsing BACKUP_ENCRYPTION_KEY(_FILE) and the
key's public fingerprint. Settings read the key where `cryptography` may not be installed (the app's
own virtualenv, where only the in-app integration and the `rollback` command live): nothing here needs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from .errors import ConfigError

KEY_BYTES = 32
_ALNUM = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789=")
_STANDARD, _URLSAFE = _ALNUM | set("+/"), _ALNUM | set("-_")


def parse_key(text: str, variable: str) -> bytes:
    """32 bytes from base64 (standard or URL-safe, padding optional); ConfigError naming `variable`."""
    raw = "".join(text.split())
    padded = raw + "=" * (-len(raw) % 4)
    key = None
    try:
        if set(raw) <= _STANDARD:
            key = base64.b64decode(padded, validate=True)
        elif set(raw) <= _URLSAFE:
            key = base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        key = None
    if key is None:
        raise ConfigError(f"{variable}: not valid base64 (standard or URL-safe); expected {KEY_BYTES} random bytes")
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{variable}: must be {KEY_BYTES} bytes, base64-encoded; it decodes to {len(key)} bytes "
                          f"(make one with: python -c 'import secrets,base64; "
                          f"print(base64.b64encode(secrets.token_bytes(32)).decode())')")
    return key


def key_id(key: bytes) -> str:
    """A short public fingerprint naming which key sealed an object (never the key itself)."""
    return hashlib.sha256(b"rollback-key-id:" + key).hexdigest()[:16]
