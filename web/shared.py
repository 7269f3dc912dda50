"""State shared by the web processes of a deployment: fixed-window counters per client address (the
API rate limit, failed console logins) and small markers (the snapshot task just sent).

It lives in Redis (the broker's instance) so every web process of a deployment shares them;
when Redis does not answer, the process falls back to counters of its own for a while rather than
refusing operators during an incident (a restore is exactly when Redis may be in trouble).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from urllib.parse import urlsplit

import redis

log = logging.getLogger("web.shared")

REDIS_TIMEOUT_SEC = 0.5
RETRY_REDIS_AFTER_SEC = 30.0


class SharedStore:
    def __init__(self, redis_url: str | None, namespace: str):
        self.prefix = "rollback:web:" + hashlib.sha256(namespace.encode()).hexdigest()[:12]
        self._redis = _client(redis_url)
        self._redis_down_until = 0.0
        self._local: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, window_sec: float) -> int:
        """Count one event for `key` in the current window; returns the count so far."""
        bucket = self._bucket(key, window_sec)
        client = self._usable_redis()
        if client is not None:
            try:
                with client.pipeline() as pipe:
                    count, _ = pipe.incr(bucket).expire(bucket, int(window_sec) + 1).execute()
                return int(count)
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            self._forget_old_buckets()
            self._local[bucket] = self._local.get(bucket, 0) + 1
            return self._local[bucket]

    def count(self, key: str, window_sec: float) -> int:
        bucket = self._bucket(key, window_sec)
        client = self._usable_redis()
        if client is not None:
            try:
                return int(client.get(bucket) or 0)
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            return self._local.get(bucket, 0)

    def reset(self, key: str, window_sec: float) -> None:
        bucket = self._bucket(key, window_sec)
        client = self._usable_redis()
        if client is not None:
            try:
                client.delete(bucket)
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            self._local.pop(bucket, None)

    # Markers are only useful when shared, so they have no in-process fallback.
    def remember(self, key: str, value: str, ttl_sec: int) -> None:
        client = self._usable_redis()
        if client is not None:
            try:
                client.set(f"{self.prefix}:{key}", value, ex=ttl_sec)
            except redis.RedisError as exc:
                self._redis_failed(exc)

    def recall(self, key: str) -> str | None:
        client = self._usable_redis()
        if client is None:
            return None
        try:
            value = client.get(f"{self.prefix}:{key}")
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return None
        return value.decode() if value is not None else None

    # -- internals ----------------------------------------------------------------------------
    def _bucket(self, key: str, window_sec: float) -> str:
        return f"{self.prefix}:{key}:{int(time.time() // window_sec)}"

    def _usable_redis(self) -> redis.Redis | None:
        if self._redis is None or time.monotonic() < self._redis_down_until:
            return None
        return self._redis

    def _redis_failed(self, exc: Exception) -> None:
        log.warning("shared web state: Redis unavailable (%s); counting in this process for %gs", exc,
                    RETRY_REDIS_AFTER_SEC)
        self._redis_down_until = time.monotonic() + RETRY_REDIS_AFTER_SEC

    def _forget_old_buckets(self) -> None:
        if len(self._local) > 10_000:  # bounded memory under an address-spraying flood
            self._local.clear()


def _client(url: str | None) -> redis.Redis | None:
    if not url or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        return None
    return redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_SEC, socket_timeout=REDIS_TIMEOUT_SEC)
