"""GET /api/v1/ready: the database, the cache and AWS IoT, each within a short time; 503 names what failed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from provisioning import aws, governor, readiness

pytestmark = pytest.mark.django_db(transaction=True)

READY_URL = "/api/v1/ready"


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    readiness.readiness_forget()
    yield
    readiness.readiness_forget()


class GetPolicyCounter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **_: Any) -> None:
        self.calls += 1


def test_ready_when_the_database_the_cache_and_aws_iot_answer(api, aws_mock):
    response = api.get(READY_URL)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "failed": [],
        "checks": {"database": "ok", "cache": "ok", "aws": "ok"},
    }
    assert "no-store" in response["Cache-Control"]


def test_not_ready_names_aws_when_the_device_policy_is_missing_and_health_stays_up(api, db):
    with mock_aws():
        aws.clients_reset()  # no bootstrap_aws: the policy every certificate gets does not exist
        response = api.get(READY_URL)
        health = api.get("/api/v1/health")
    aws.clients_reset()

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failed"] == ["aws"]
    assert body["checks"]["aws"] == "ResourceNotFoundException"
    assert health.status_code == 200, "health is liveness only: AWS is not its business"


def test_not_ready_names_the_cache_when_redis_does_not_answer(api, aws_mock, settings):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": f"redis://127.0.0.1:{port}/0"}
    }

    response = api.get(READY_URL)

    assert response.status_code == 503
    assert response.json()["failed"] == ["cache"]
    assert response.json()["checks"]["cache"] == "ConnectionError"


def test_a_part_that_does_not_answer_in_time_is_named_and_the_answer_is_not_late(api, aws_mock, settings, monkeypatch):
    assert api.get(READY_URL).status_code == 200  # AWS IoT's answer now stands for CVM_READY_AWS_SECONDS
    settings.CVM_READY_TIMEOUT_SECONDS = 0.3
    release = threading.Event()
    started = []

    def hung_database() -> None:
        started.append(1)
        release.wait(10)

    monkeypatch.setitem(readiness.CHECKS, "database", hung_database)
    try:
        began = time.monotonic()
        first = api.get(READY_URL)
        elapsed = time.monotonic() - began
        second = api.get(READY_URL)
    finally:
        release.set()

    assert first.status_code == 503
    assert first.json()["failed"] == ["database"]
    assert first.json()["checks"]["database"] == "no answer within 0.3 s"
    assert elapsed < 2
    assert second.json()["failed"] == ["database"]
    assert len(started) == 1, "a probe waits on the check still running instead of starting another"


def test_a_failing_database_is_named(api, aws_mock, monkeypatch):
    from django.db import OperationalError

    def refused() -> None:
        raise OperationalError("connection to server at 10.0.0.5 failed: password authentication failed")

    monkeypatch.setitem(readiness.CHECKS, "database", refused)

    response = api.get(READY_URL)

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "OperationalError", "no driver message, no host names"


def test_the_aws_probe_costs_one_call_per_interval_and_no_quota_slot(api, aws_mock, settings, monkeypatch):
    def no_slot(operation: str, **_: Any) -> float:
        raise AssertionError(f"readiness took a quota slot for {operation}")

    monkeypatch.setattr(governor, "acquire", no_slot)
    counter = GetPolicyCounter()
    aws.clients.iot_probe_client().meta.events.register("before-call.iot.GetPolicy", counter)

    answers = [api.get(READY_URL).status_code for _ in range(5)]

    assert answers == [200] * 5
    assert counter.calls == 1

    settings.CVM_READY_AWS_SECONDS = 0
    api.get(READY_URL)
    assert counter.calls == 2


def test_ready_is_not_redirected_to_https(api, aws_mock, settings):
    # Probes come over plain HTTP from beside the process (the image's HEALTHCHECK), not through the proxy.
    settings.SECURE_SSL_REDIRECT = True

    assert api.get(READY_URL).status_code == 200
    assert api.get("/api/v1/health").status_code == 200
    assert api.get("/api/v1/certificates").status_code == 301
