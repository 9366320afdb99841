"""The shared cache: Django's Redis backend with one Redis client per pool, and windowed counters.

Every per-request limit (requests per address, lockouts, login failures) asks the cache, so its cost is
paid by every refusal an attacker causes. Two costs of Django's own backend are removed here:

- Django's `RedisCacheClient.get_client` builds a new `redis.Redis` for every operation, and each one
  copies redis-py's table of some two hundred response callbacks. Under gunicorn that was about an eighth
  of the CPU a refused device call costs (profiled with py-spy). A `redis.Redis` is safe to share between
  threads (each command takes a connection from the pool), so one per pool is kept.
- Django has no "increment, creating with a lifetime" operation: `incr` checks `EXISTS` first and raises
  on a missing key, so a counter costs two or three round trips. `window_increment` is one.

Written here rather than taken from django-redis: that library replaces the whole backend (its own
serializer, key format and options) for what is a dozen lines on top of Django's.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from django.core.cache.backends import redis as django_redis


class RedisCacheClient(django_redis.RedisCacheClient):
    """Django's client, keeping one `redis.Redis` per connection pool instead of one per operation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            # Two threads may both build one the first time; either is fine to keep.
            client = self._clients.setdefault(index, self._client(connection_pool=self._get_connection_pool(write)))
        return client

    def window_increment(self, key: str, timeout: int) -> int:
        """SET NX with a lifetime, then INCR, pipelined: one round trip, and the counter always expires."""
        with self.get_client(key, write=True).pipeline(transaction=False) as pipe:
            pipe.set(key, 0, ex=timeout, nx=True)
            pipe.incr(key)
            return int(pipe.execute()[1])


class RedisCache(django_redis.RedisCache):
    """`CACHE_URL=redis://…` selects this backend (settings.py); same options and keys as Django's."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient

    def window_increment(self, key: str, timeout: int) -> int:
        return self._cache.window_increment(self.make_and_validate_key(key), timeout)


def window_increment(key: str, timeout: int) -> int:
    """Add one to the counter `key` and return its new value (1 for a new counter).

    The counter is created with a lifetime of `timeout` seconds and is not extended by later increments,
    so a fixed window ends when it expires. One Redis round trip; with another cache (local memory in
    development and tests) an add and an increment, tolerating the key expiring in between.
    """
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        return backend.window_increment(key, timeout)
    backend.add(key, 0, timeout=timeout)
    try:
        return backend.incr(key)
    except ValueError:  # expired or evicted between the two
        backend.set(key, 1, timeout=timeout)
        return 1
