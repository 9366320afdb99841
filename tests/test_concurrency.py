"""A token issues exactly one certificate however many requests race for it.

Runs on SQLite in `make test` and again on PostgreSQL in `.ci/run`, where rows are really locked.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from provisioning.audit import audit_verify
from provisioning.models import AuditEvent, AuditKind, Certificate, Device, DeviceState

from .conftest import run_together, vend

pytestmark = pytest.mark.django_db(transaction=True)

RACERS = 24


def race(n: int, request) -> list[int]:
    return run_together(n, lambda i: request(APIClient(), i).status_code)


def test_simultaneous_requests_with_one_token_issue_exactly_one_certificate(aws_mock, make_device):
    device = make_device()

    statuses = race(RACERS, lambda client, _: vend(client, device.serial, device.token))

    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {201, 403, 409}, statuses
    assert len(aws_mock.all_certificates()) == 1
    assert [c["status"] for c in aws_mock.thing_certificates(device.serial)] == ["ACTIVE"]
    assert Certificate.objects.filter(device__serial=device.serial).count() == 1
    assert Device.objects.get(serial=device.serial).state == DeviceState.ACTIVE
    assert AuditEvent.objects.filter(kind=AuditKind.CERTIFICATE_ISSUED).count() == 1


def test_simultaneous_requests_for_different_devices_all_succeed_and_keep_the_audit_chain(aws_mock, make_device):
    devices = [make_device() for _ in range(12)]

    statuses = race(len(devices), lambda client, i: vend(client, devices[i].serial, devices[i].token))

    assert statuses == [201] * len(devices)
    assert len(aws_mock.active_certificates()) == len(devices)
    # Many writers appended at once; the chain must still be one unbroken line.
    assert audit_verify() == []
