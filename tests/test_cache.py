"""The shared cache (provisioning/cache.py): windowed counters in one round trip, one Redis client per pool."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import caches
from django.test import override_settings

from provisioning.cache import RedisCache, window_increment
from scripts.processes import port_in_use

from .settings_reload import settings_under

needs_redis = pytest.mark.skipif(not port_in_use(6379), reason="no Redis on 127.0.0.1:6379")
REDIS_CACHE = {"default": {"BACKEND": "provisioning.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/9"}}


def test_a_redis_cache_url_selects_the_portals_backend(monkeypatch):
    assert settings_under(monkeypatch, CACHE_URL="redis://127.0.0.1:6379/3")["CACHES"]["default"] == {
        "BACKEND": "provisioning.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/3",
    }
    assert settings_under(monkeypatch, CACHE_URL="locmemcache://")["CACHES"]["default"]["BACKEND"] == (
        "django.core.cache.backends.locmem.LocMemCache"
    )


def test_every_database_connection_is_kept_between_requests(monkeypatch):
    for url in ("sqlite:////tmp/cvm-conn.sqlite3", "postgres://cvm@db.internal:5432/cvm"):
        database = settings_under(monkeypatch, DATABASE_URL=url)["DATABASES"]["default"]
        assert (database["CONN_MAX_AGE"], database["CONN_HEALTH_CHECKS"]) == (60, True)


def test_a_window_counter_counts_from_one_in_local_memory():
    key = f"test:window:{uuid.uuid4()}"

    assert [window_increment(key, 60) for _ in range(3)] == [1, 2, 3]
    caches["default"].delete(key)  # the window ended
    assert window_increment(key, 60) == 1


@needs_redis
@override_settings(CACHES=REDIS_CACHE)
def test_a_window_counter_is_one_round_trip_and_its_lifetime_is_not_extended(monkeypatch):
    import redis
    from redis.connection import AbstractConnection

    backend = caches["default"]
    assert isinstance(backend, RedisCache)
    key = f"test:window:{uuid.uuid4()}"
    stored = backend.make_and_validate_key(key)
    server = redis.Redis(db=9)
    sent: list[bytes] = []
    send = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(b"".join(command) if isinstance(command, list) else command)
        return send(self, command, check_health)

    backend.get(key)  # the connection's own handshake is not the counter's
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    counts = [window_increment(key, 30) for _ in range(3)]
    monkeypatch.undo()
    server.expire(stored, 5)  # what the first increment set, shortened: a later one must not renew it
    window_increment(key, 30)

    assert counts == [1, 2, 3]
    assert len(sent) == 3, "one round trip per increment"
    assert all(b"NX" in packet and b"INCR" in packet for packet in sent)
    assert backend.get(key) == 4, "Django's own get reads the counter"
    assert 0 < server.ttl(stored) <= 5
    server.delete(stored)


@needs_redis
@override_settings(CACHES=REDIS_CACHE)
def test_one_redis_client_serves_every_operation_of_a_backend():
    backend = caches["default"]
    client = backend._cache

    assert client.get_client(write=True) is client.get_client(write=False) is client.get_client("any", write=True)
    backend.set("test:client", 7, timeout=5)
    assert backend.get("test:client") == 7
    assert backend.get_many(["test:client", "test:none"]) == {"test:client": 7}
    backend.delete("test:client")
