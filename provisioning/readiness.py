"""Readiness (SPEC §3): can this instance serve a device now?

Three parts, checked concurrently, each given `CVM_READY_TIMEOUT_SECONDS` to answer: the database
(`SELECT 1` on a connection of its own), the cache (a write and a read back: throttles and lockouts live
there) and AWS IoT (one signed call, `aws.iot_probe`). A part that raises or does not answer in time has
failed; the answer names it. Health (`/api/v1/health`) stays liveness only: it asks the database alone.

Each part runs at most once at a time per process: a probe that arrives while the previous check of a
part is still waiting (a database that stopped answering) waits on that same check instead of starting
another, so a hung dependency costs one thread per part, not one per probe. The AWS IoT answer stands
for `CVM_READY_AWS_SECONDS`, so however often the orchestrator asks, a process makes at most one AWS
call in that time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.core.cache import cache
from django.db import connection

from . import aws

PARTS = ("database", "cache", "aws")


def _database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # This thread's own connection: closed, so a probe never holds one between probes.
        connection.close()


def _cache() -> None:
    key = f"cvm:ready:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=30)
    try:
        if cache.get(key) != "1":
            raise LookupError("the cache did not return what was written")
    finally:
        cache.delete(key)


class _AwsOutcome:
    """The last AWS IoT probe's result, kept for CVM_READY_AWS_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked_at: float | None = None
        self.error: Exception | None = None

    def check(self) -> None:
        with self.lock:
            now = time.monotonic()
            if self.checked_at is None or now - self.checked_at >= settings.CVM_READY_AWS_SECONDS:
                try:
                    aws.iot_probe(policy_name=settings.CVM_IOT_POLICY_NAME)
                    self.error = None
                except aws.AwsError as exc:
                    self.error = exc
                self.checked_at = time.monotonic()
            if self.error is not None:
                raise self.error


_aws_outcome = _AwsOutcome()

CHECKS: dict[str, Callable[[], None]] = {"database": _database, "cache": _cache, "aws": _aws_outcome.check}

_lock = threading.Lock()
_running: dict[str, Future] = {}
# One thread per part is all single-flight needs; the spare ones cover a part stuck past its timeout.
_executor = ThreadPoolExecutor(max_workers=2 * len(PARTS), thread_name_prefix="ready")


def _start(part: str) -> Future:
    with _lock:
        future = _running.get(part)
        if future is None or future.done():
            future = _running[part] = _executor.submit(CHECKS[part])
        return future


def _reason(exc: BaseException) -> str:
    # The class or AWS error code only: a driver's message can carry host names or connection strings.
    if isinstance(exc, aws.AwsError):
        return exc.code
    return type(exc).__name__


def readiness_check() -> dict[str, str]:
    """{part: "ok" or why it failed}, for every part, within about CVM_READY_TIMEOUT_SECONDS."""
    timeout = settings.CVM_READY_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    futures = {part: _start(part) for part in PARTS}
    results = {}
    for part, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            results[part] = "ok"
        except FutureTimeout:
            results[part] = f"no answer within {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency means "not ready", named
            results[part] = _reason(exc)
    return results


def readiness_forget() -> None:
    """Drop the remembered AWS IoT answer (tests, and after a configuration change in a shell)."""
    with _aws_outcome.lock:
        _aws_outcome.checked_at = None
        _aws_outcome.error = None
