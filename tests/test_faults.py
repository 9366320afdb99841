"""A failure at any AWS step leaves no ACTIVE certificate, keeps the token valid and can be retried."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from provisioning import aws
from provisioning.models import AuditEvent, AuditKind, Device, DeviceState

from .conftest import make_csr, vend

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = [
    "CreateThing",
    "CreateKeysAndCertificate",
    "AttachPolicy",
    "AttachThingPrincipal",
    "UpdateCertificate",
    "DescribeEndpoint",
]


@pytest.mark.parametrize("operation", STEPS)
def test_failure_at_each_step_leaves_no_active_certificate_and_retry_succeeds(
    api, aws_mock, aws_fault, make_device, operation
):
    device = make_device()
    fault = aws_fault(operation)

    failed = vend(api, device.serial, device.token)

    assert failed.status_code == 503
    assert int(failed["Retry-After"]) >= 1
    assert failed.json() == {"detail": "AWS IoT is unavailable; nothing was issued, retry later"}
    # botocore's standard mode makes three attempts; undoing a failed activation tries UpdateCertificate
    # (INACTIVE) three more times.
    assert fault.calls == (6 if operation == "UpdateCertificate" else 3)
    assert not aws_mock.active_certificates()
    assert aws_mock.all_certificates() == [], "what was created was deleted again"
    assert Device.objects.get(serial=device.serial).state == DeviceState.TOKEN_ISSUED
    failure = AuditEvent.objects.filter(kind=AuditKind.VEND_FAILED).get()
    assert failure.data["operation"] == operation
    assert failure.data["reason"] == "aws_error"

    fault.heal()
    retried = vend(api, device.serial, device.token)

    assert retried.status_code == 201
    certificates = aws_mock.thing_certificates(device.serial)
    assert [c["status"] for c in certificates] == ["ACTIVE"]
    assert certificates[0]["certificateId"] == retried.json()["certificate_id"]


@pytest.mark.parametrize("operation", ["CreateCertificateFromCsr", "AttachPolicy", "UpdateCertificate"])
def test_failure_on_the_csr_path_leaves_nothing_usable(api, aws_mock, aws_fault, make_device, operation):
    device = make_device()
    csr_pem, _ = make_csr(device.serial)
    aws_fault(operation)

    assert vend(api, device.serial, device.token, csr=csr_pem).status_code == 503
    assert not aws_mock.active_certificates()
    assert Device.objects.get(serial=device.serial).state == DeviceState.TOKEN_ISSUED


def test_certificates_created_before_a_failure_are_deleted(api, aws_mock, aws_fault, make_device):
    device = make_device()
    aws_fault("AttachThingPrincipal")

    assert vend(api, device.serial, device.token).status_code == 503

    assert aws_mock.all_certificates() == []


def test_hard_limit_is_not_retried(api, aws_mock, aws_fault, make_device):
    device = make_device()
    fault = aws_fault("CreateKeysAndCertificate", code="LimitExceededException", status=400)

    response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    assert fault.calls == 1, "a hard AWS IoT limit must not burn the quota on retries"


def test_throttling_is_retried_then_answered_503_with_retry_after(api, aws_mock, aws_fault, make_device):
    device = make_device()
    fault = aws_fault("AttachPolicy", code="ThrottlingException", status=400)

    response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    assert response["Retry-After"] == str(aws.THROTTLE_RETRY_AFTER)
    assert fault.calls == 3


def test_transient_failure_absorbed_by_retries_still_issues(api, aws_mock, aws_fault, make_device):
    device = make_device()
    fault = aws_fault("AttachThingPrincipal", times=2)

    response = vend(api, device.serial, device.token)

    assert response.status_code == 201
    assert fault.calls == 2


def test_stale_claim_of_a_crashed_process_is_recovered_on_the_next_request(api, aws_mock, make_device):
    device = make_device()
    # What a process killed after activation but before recording leaves behind: an ACTIVE certificate
    # on the thing that the database does not know, and a claim nobody will release.
    aws_mock.iot.create_thing(thingName=device.serial)
    orphan = aws_mock.iot.create_keys_and_certificate(setAsActive=True)
    aws_mock.iot.attach_thing_principal(thingName=device.serial, principal=orphan["certificateArn"])
    Device.objects.filter(serial=device.serial).update(
        state=DeviceState.ISSUING, claimed_at=timezone.now() - timedelta(minutes=3)
    )

    response = vend(api, device.serial, device.token)

    assert response.status_code == 201
    certificates = aws_mock.thing_certificates(device.serial)
    assert [c["certificateId"] for c in certificates] == [response.json()["certificate_id"]]
    assert [c["certificateId"] for c in aws_mock.active_certificates()] == [response.json()["certificate_id"]]
    recovered = AuditEvent.objects.filter(kind=AuditKind.CLAIM_RECOVERED).get()
    assert recovered.data["discarded_certificates"] == [orphan["certificateId"]]


def test_fresh_claim_is_not_recovered(api, aws_mock, make_device):
    device = make_device()
    Device.objects.filter(serial=device.serial).update(state=DeviceState.ISSUING, claimed_at=timezone.now())

    assert vend(api, device.serial, device.token).status_code == 409
    assert not AuditEvent.objects.filter(kind=AuditKind.CLAIM_RECOVERED).exists()


def test_certificate_that_could_not_be_removed_is_cleaned_up_by_the_next_vend(api, aws_mock, aws_fault, make_device):
    device = make_device()
    faults = [aws_fault(op) for op in ("UpdateCertificate", "DetachThingPrincipal", "DeleteCertificate")]

    assert vend(api, device.serial, device.token).status_code == 503
    leftover = aws_mock.thing_certificates(device.serial)
    assert [c["status"] for c in leftover] == ["INACTIVE"], "never activated, so never usable"
    assert Device.objects.get(serial=device.serial).aws_cleanup_pending

    for fault in faults:
        fault.heal()
    response = vend(api, device.serial, device.token)

    assert response.status_code == 201
    assert [c["certificateId"] for c in aws_mock.all_certificates()] == [response.json()["certificate_id"]]
    assert not Device.objects.get(serial=device.serial).aws_cleanup_pending


@pytest.mark.parametrize("operation", ["CreateKeysAndCertificate", "AttachPolicy", "UpdateCertificate"])
def test_lost_answers_leave_no_active_certificate(api, aws_mock, aws_fault, make_device, operation):
    # AWS carried the call out but the answer never came back (a read timeout): the worst case for
    # UpdateCertificate, where the certificate really is ACTIVE when the portal gives up.
    device = make_device()
    fault = aws_fault(operation, reached_aws=True)

    assert vend(api, device.serial, device.token).status_code == 503
    assert not aws_mock.active_certificates()

    fault.heal()
    response = vend(api, device.serial, device.token)
    assert response.status_code == 201
    assert [c["certificateId"] for c in aws_mock.active_certificates()] == [response.json()["certificate_id"]]


def test_recovering_a_dead_claim_while_aws_is_down_is_a_503_not_an_error(api, aws_mock, aws_fault, make_device):
    device = make_device()
    Device.objects.filter(serial=device.serial).update(
        state=DeviceState.ISSUING, claimed_at=timezone.now() - timedelta(minutes=3)
    )
    fault = aws_fault("ListThingPrincipals")

    response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert Device.objects.get(serial=device.serial).state == DeviceState.ISSUING, "still to be recovered"
    fault.heal()
    assert vend(api, device.serial, device.token).status_code == 201
