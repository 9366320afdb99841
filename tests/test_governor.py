"""The quota governor keeps AWS IoT calls under the account's quota, shared across processes via Redis."""

from __future__ import annotations

import importlib.util
import itertools
import time
from types import ModuleType

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import cvm_portal.settings
from provisioning import governor
from provisioning.models import AuditEvent, AuditKind, Device, DeviceState
from scripts.processes import port_in_use

from .conftest import vend


def settings_with(monkeypatch, **environment: str) -> ModuleType:
    """cvm_portal/settings.py read afresh, under another module name, with `environment` set."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("settings_under_test", cvm_portal.settings.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_off_switches_the_governor_off_for_every_api_not_named(monkeypatch):
    assert settings_with(monkeypatch, CVM_AWS_RATES="off").CVM_AWS_RATES == {"default": 0.0}
    assert settings_with(monkeypatch, CVM_AWS_RATES="CreateThing=5, OFF").CVM_AWS_RATES == {
        "default": 0.0,
        "CreateThing": 5.0,
    }
    # `default=0` leaves the named APIs' quotas as they were; only `off` clears them.
    rates = settings_with(monkeypatch, CVM_AWS_RATES="default=0").CVM_AWS_RATES
    assert rates["default"] == 0
    assert rates["CreateKeysAndCertificate"] == 10
    with pytest.raises(ImproperlyConfigured, match="is not API=calls_per_second"):
        settings_with(monkeypatch, CVM_AWS_RATES="off,CreateThing=fast")


@override_settings(CVM_AWS_RATES={"default": 0.0, "CreateThing": 5.0})
def test_an_api_without_a_quota_never_waits_and_reserves_nothing(monkeypatch):
    reserved: list[str] = []

    class Recording:
        def reserve(self, key: str, **_: float) -> governor.Decision:
            reserved.append(key)
            return governor.Decision(True, 0.0)

    monkeypatch.setattr(governor, "backend", Recording)

    assert [governor.acquire("CreateKeysAndCertificate") for _ in range(100)] == [0.0] * 100
    governor.acquire("CreateThing")
    assert reserved == ["CreateThing"]


def test_local_schedule_spaces_calls_and_refuses_beyond_the_queue():
    backend = governor.LocalBackend()
    waits = [backend.reserve("Op", interval=0.1, tolerance=0.0, max_wait=0.35).wait for _ in range(4)]
    assert waits[0] == 0
    assert waits == sorted(waits)
    assert 0.25 < waits[3] <= 0.35

    refused = backend.reserve("Op", interval=0.1, tolerance=0.0, max_wait=0.35)
    assert not refused.granted
    assert refused.wait > 0.35, "Retry-After says when a slot is really free"


def test_burst_is_allowed_then_calls_are_spaced():
    backend = governor.LocalBackend()
    waits = [backend.reserve("Op", interval=0.1, tolerance=0.2, max_wait=1).wait for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] > 0


@override_settings(CVM_AWS_RATES={"default": 10.0}, CVM_AWS_BURST_SECONDS=0, CVM_AWS_QUEUE_SECONDS=0.3)
def test_a_vend_is_admitted_only_when_every_api_it_calls_has_a_slot_soon(monkeypatch):
    local = governor.LocalBackend()
    monkeypatch.setattr(governor, "backend", lambda: local)
    for _ in range(4):  # AttachPolicy's next slot is now 0.4 s away; CreateThing's is free
        local.reserve("AttachPolicy", interval=0.1, tolerance=0.0, max_wait=1)

    with pytest.raises(governor.QuotaExhausted) as refused:
        governor.admit(["CreateThing", "AttachPolicy"])

    assert refused.value.operation == "AttachPolicy"
    assert 0.05 < refused.value.retry_after <= 0.1, "back when AttachPolicy has a slot within the queue"
    assert local.waits({"CreateThing": 0.0}) == {"CreateThing": 0.0}, "a refused vend reserved nothing"
    time.sleep(0.12)
    governor.admit(["CreateThing", "AttachPolicy"])


@override_settings(CVM_AWS_RATES={"default": 10.0}, CVM_AWS_BURST_SECONDS=0, CVM_AWS_QUEUE_SECONDS=0.2)
def test_an_admitted_call_waits_up_to_twice_the_queue_rather_than_give_up_half_way(monkeypatch):
    local = governor.LocalBackend()
    monkeypatch.setattr(governor, "backend", lambda: local)
    slept: list[float] = []

    waits = [governor.acquire("AttachPolicy", sleep=slept.append) for _ in range(5)]

    assert waits[-1] == pytest.approx(0.4, abs=0.02)
    with pytest.raises(governor.QuotaExhausted) as refused:
        governor.acquire("AttachPolicy", sleep=slept.append)
    assert refused.value.retry_after == pytest.approx(0.3, abs=0.02)


@pytest.mark.skipif(not port_in_use(6379), reason="no Redis on 127.0.0.1:6379")
def test_redis_tells_the_wait_of_several_schedules_at_once_without_reserving():
    import redis

    redis.Redis().delete("cvm:quota:WaitA", "cvm:quota:WaitB")
    backend = governor.RedisBackend("redis://127.0.0.1:6379/0")
    for _ in range(3):
        backend.reserve("WaitA", interval=0.1, tolerance=0.0, max_wait=5)

    first = backend.waits({"WaitA": 0.0, "WaitB": 0.0})
    second = backend.waits({"WaitA": 0.05, "WaitB": 0.0})

    assert 0.25 < first["WaitA"] <= 0.3
    assert first["WaitB"] == 0
    assert second["WaitA"] < first["WaitA"] - 0.04, "the tolerance lets a call go that much earlier"
    assert backend.reserve("WaitB", interval=0.1, tolerance=0.0, max_wait=5).wait == 0, "nothing was reserved"
    redis.Redis().delete("cvm:quota:WaitA", "cvm:quota:WaitB")


@pytest.mark.skipif(not port_in_use(6379), reason="no Redis on 127.0.0.1:6379")
def test_two_instances_share_one_schedule_through_redis():
    import redis

    redis.Redis().delete("cvm:quota:SharedOp")
    first, second = governor.RedisBackend("redis://127.0.0.1:6379/0"), governor.RedisBackend("redis://127.0.0.1:6379/0")
    slots = []
    for i in range(6):
        asked = time.monotonic()
        decision = (first if i % 2 else second).reserve("SharedOp", interval=0.1, tolerance=0.0, max_wait=5)
        slots.append(asked + decision.wait)  # when this call may go, on one clock
    # One schedule: each slot lands 100 ms after the previous one, whichever instance reserved it.
    for earlier, later in itertools.pairwise(slots):
        assert 0.08 < later - earlier < 0.12
    redis.Redis().delete("cvm:quota:SharedOp")


@pytest.mark.django_db(transaction=True)
def test_a_burst_beyond_the_quota_is_answered_503_with_retry_after_and_keeps_the_token(api, aws_mock, make_device):
    first, second = make_device(), make_device()
    governor.backend.cache_clear()
    with override_settings(CVM_AWS_RATES={"default": 1000, "CreateKeysAndCertificate": 0.05}, CVM_AWS_QUEUE_SECONDS=0):
        assert vend(api, first.serial, first.token).status_code == 201
        response = vend(api, second.serial, second.token)
    governor.backend.cache_clear()

    assert response.status_code == 503
    assert 15 <= int(response["Retry-After"]) <= 21, "the next slot is 20 s away at 0.05 calls/s"
    assert Device.objects.get(serial=second.serial).state == DeviceState.TOKEN_ISSUED
    assert len(aws_mock.all_certificates()) == 1, "the refused vend made no AWS call"
    assert not AuditEvent.objects.filter(serial=second.serial, kind=AuditKind.VEND_CLAIMED).exists(), (
        "it was turned away before the device was claimed"
    )


@pytest.mark.django_db
def test_metrics_are_served_to_loopback_and_count_vends(client, api, aws_mock, make_device):
    device = make_device()
    vend(api, device.serial, device.token)

    body = client.get("/metrics").content.decode()

    assert 'cvm_vend_requests_total{outcome="issued"}' in body
    assert "cvm_vend_duration_seconds_bucket" in body
    assert 'cvm_aws_call_duration_seconds_count{operation="CreateKeysAndCertificate"}' in body
    assert "cvm_outbox_backlog" in body
    assert "cvm_outbox_lag_seconds" in body
    # The vend's events, not chained yet: no worker runs in this test.
    unchained = AuditEvent.objects.filter(seq__isnull=True).count()
    assert unchained > 0
    assert f"\ncvm_audit_unchained {unchained}.0\n" in body
    assert "cvm_audit_chain_lag_seconds" in body
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 403


@pytest.mark.django_db
@override_settings(CVM_METRICS_TOKEN="scrape-secret")
def test_metrics_with_a_token_need_the_token(client):
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
