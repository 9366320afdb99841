"""The AWS IoT quota governor: every control-plane call waits for a slot of its API's rate.

AWS IoT limits each API to a few calls per second per account (CreateKeysAndCertificate around 10,
attach and update calls around 15). Past that it throttles, and a throttled call has already cost a
request. The governor keeps the portal under the quota instead: each call reserves a slot with the
generic cell rate algorithm (GCRA) and waits for it.

A vend calls six APIs in three dependent stages. Turned away at the second stage, it has spent its
first-stage slots for nothing and spends more undoing its certificate (UpdateCertificate, the activation's
own API, among them), so a full schedule would cost more than one call per API per certificate. So a vend
asks first (`admit`): only when every API it calls has a slot within `CVM_AWS_QUEUE_SECONDS` is the device
claimed; otherwise it is answered 503 at once, with `Retry-After` saying when the busiest schedule will
have room again. An admitted vend's calls then wait up to twice that for their slots rather than give up
half-way; a call that would wait longer still is refused (`QuotaExhausted`).

The state is one number per API (the theoretical arrival time). With `CACHE_URL` naming Redis it lives
there, updated by one Lua script, so every worker of every instance shares one quota; otherwise it is
process-local.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

# Atomically: reserve the next slot if it is at most max_wait away. Redis's own clock, so instances
# with skewed clocks still share one schedule. Returns {granted 0/1, wait in microseconds}.
GCRA_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then return {0, wait} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
"""


# Atomically: the longest any of KEYS would wait for a slot now (ARGV: each key's tolerance), in
# microseconds, reserving nothing.
WAIT_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local waits = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  local wait = tat - tonumber(ARGV[i]) - now
  if wait < 0 then wait = 0 end
  waits[i] = wait
end
return waits
"""


@dataclass(frozen=True)
class Decision:
    granted: bool
    wait: float  # seconds: to sleep before calling when granted, until a slot would be free when not


class Backend(Protocol):
    def reserve(self, key: str, *, interval: float, tolerance: float, max_wait: float) -> Decision: ...

    def waits(self, tolerances: dict[str, float]) -> dict[str, float]: ...


class LocalBackend:
    """One schedule per API for this process; right for one worker, or for tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve(self, key: str, *, interval: float, tolerance: float, max_wait: float) -> Decision:
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat.get(key, now), now)
            wait = max(0.0, tat - tolerance - now)
            if wait > max_wait:
                return Decision(False, wait)
            self._tat[key] = tat + interval
            return Decision(True, wait)

    def waits(self, tolerances: dict[str, float]) -> dict[str, float]:
        """How long a call of each key would wait for its slot now; reserves nothing."""
        with self._lock:
            now = time.monotonic()
            return {key: max(0.0, self._tat.get(key, now) - tolerance - now) for key, tolerance in tolerances.items()}


class RedisBackend:
    """One schedule per API shared by every process that talks to the same Redis."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script = self._client.register_script(GCRA_LUA)
        self._waits = self._client.register_script(WAIT_LUA)

    def reserve(self, key: str, *, interval: float, tolerance: float, max_wait: float) -> Decision:
        granted, wait = self._script(
            keys=[f"cvm:quota:{key}"],
            args=[int(interval * 1e6), int(tolerance * 1e6), int(max_wait * 1e6)],
        )
        return Decision(bool(granted), int(wait) / 1e6)

    def waits(self, tolerances: dict[str, float]) -> dict[str, float]:
        keys = list(tolerances)
        waits = self._waits(keys=[f"cvm:quota:{key}" for key in keys], args=[int(tolerances[k] * 1e6) for k in keys])
        return {key: int(wait) / 1e6 for key, wait in zip(keys, waits, strict=True)}


@functools.cache
def backend() -> Backend:
    url = settings.CVM_QUOTA_REDIS_URL
    return RedisBackend(url) if url else LocalBackend()


class QuotaExhausted(Exception):
    def __init__(self, operation: str, retry_after: float) -> None:
        super().__init__(f"{operation}: AWS IoT quota in use for the next {retry_after:.1f} s")
        self.operation = operation
        self.retry_after = retry_after


def rate_for(operation: str) -> float:
    rates: dict[str, float] = settings.CVM_AWS_RATES
    return rates.get(operation, rates.get("default", 10.0))


def _tolerance(rate: float) -> float:
    """How far ahead of the schedule a call may go: `CVM_AWS_BURST_SECONDS` worth of calls at once."""
    burst = max(1.0, rate * settings.CVM_AWS_BURST_SECONDS)
    return (burst - 1) / rate


def admit(operations: Iterable[str]) -> None:
    """Raise QuotaExhausted unless every one of `operations` has a slot within `CVM_AWS_QUEUE_SECONDS`.

    Reserves nothing: each call still reserves its own slot when it is made. `retry_after` is when the
    busiest schedule will have a slot that near again, so a device told to come back then is admitted
    unless others took those slots first.
    """
    tolerances = {op: _tolerance(rate) for op in operations if (rate := rate_for(op)) > 0}
    if not tolerances:
        return
    waits = backend().waits(tolerances)
    busiest = max(waits, key=waits.__getitem__)
    if waits[busiest] > settings.CVM_AWS_QUEUE_SECONDS:
        raise QuotaExhausted(busiest, waits[busiest] - settings.CVM_AWS_QUEUE_SECONDS)


def acquire(operation: str, *, sleep: Any = time.sleep) -> float:
    """Wait for a slot of `operation`'s quota and return how long that took, or raise QuotaExhausted.

    A call waits up to twice `CVM_AWS_QUEUE_SECONDS`: the vend it belongs to was admitted with its slots
    at most that far away, and other admitted vends may have taken some since.
    """
    rate = rate_for(operation)
    if rate <= 0:
        return 0.0
    queue = settings.CVM_AWS_QUEUE_SECONDS
    decision = backend().reserve(operation, interval=1.0 / rate, tolerance=_tolerance(rate), max_wait=2 * queue)
    if not decision.granted:
        raise QuotaExhausted(operation, decision.wait - queue)
    if decision.wait > 0:
        sleep(decision.wait)
    return decision.wait
