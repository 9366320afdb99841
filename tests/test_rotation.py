"""A device's certificate over its whole life: a lost answer fetched again (SPEC §3.1), rotation with
proof of possession (§3.2), confirmation, roll-back, and revoke during a pending rotation."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from provisioning.models import AuditEvent, AuditKind, Certificate, CertificateStatus, Device, DeviceState
from provisioning.proofs import csr_sha256
from provisioning.services import device_reset, device_revoke
from provisioning.services.rotation import rotations_expire

from .conftest import VEND_URL, make_csr, vend

ROTATE_URL = "/api/v1/certificates/rotate"
CONFIRM_URL = "/api/v1/certificates/rotate/confirm"
PROOF_REFUSED = {"detail": "invalid serial or proof"}


def proof(key: Any, serial: str, *, audience: str = "cvm-rotate", csr: str | None = None, **claims: Any) -> str:
    algorithm = "ES256"
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    body: dict[str, Any] = {"sub": serial, "aud": audience, "iat": int(time.time()), "jti": uuid.uuid4().hex}
    if csr is not None:
        body["csr_sha256"] = csr_sha256(x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER))
    body.update(claims)
    return jwt.encode(body, key, algorithm=claims.pop("alg", algorithm))


def rotate(api, serial: str, current_key: Any, new_key: Any | None = None, **claims: Any):
    new_key = new_key or ec.generate_private_key(ec.SECP256R1())
    csr, _ = make_csr(serial, key=new_key)
    token = proof(current_key, serial, csr=csr, **claims)
    return api.post(ROTATE_URL, {"serial": serial, "csr": csr, "proof": token}, format="json"), new_key, csr


def confirm(api, serial: str, new_key: Any, **claims: Any):
    token = proof(new_key, serial, audience="cvm-confirm", **claims)
    return api.post(CONFIRM_URL, {"serial": serial, "proof": token}, format="json")


@pytest.fixture
def provisioned(api, aws_mock, make_device):
    """A device vended with a CSR: its serial, token, key and 201 body."""

    def make(serial: str = "SN-ROT", key: Any | None = None):
        device = make_device(serial)
        key = key or ec.generate_private_key(ec.SECP256R1())
        csr, _ = make_csr(serial, key=key)
        response = vend(api, serial, device.token, csr=csr)
        assert response.status_code == 201, response.json()
        return device, key, csr, response.json()

    return make


def statuses(aws_mock) -> dict[str, str]:
    return {c["certificateId"]: c["status"] for c in aws_mock.all_certificates()}


# --- §3.1 a lost answer ------------------------------------------------------------------------------


def test_a_lost_answer_is_fetched_again_with_the_same_token_and_key(api, aws_mock, provisioned):
    device, key, _, first = provisioned()
    again_csr, _ = make_csr(device.serial, key=key)  # a new CSR, the same key

    response = vend(api, device.serial, device.token, csr=again_csr)

    assert response.status_code == 200
    assert response.json() == first
    assert len(aws_mock.all_certificates()) == 1, "nothing new in AWS IoT"
    assert AuditEvent.objects.filter(kind=AuditKind.CERTIFICATE_REPLAYED, serial=device.serial).count() == 1


def test_a_replay_with_another_key_is_the_identical_403(api, aws_mock, provisioned):
    device, _, _, _ = provisioned()
    other, _ = make_csr(device.serial)

    response = vend(api, device.serial, device.token, csr=other)

    assert response.status_code == 403
    assert response.json() == {"detail": "invalid serial or token"}
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED, serial=device.serial).count() == 1


def test_a_server_generated_key_is_never_replayed(api, aws_mock, make_device):
    device = make_device()
    assert vend(api, device.serial, device.token).status_code == 201

    assert vend(api, device.serial, device.token).status_code == 403
    assert vend(api, device.serial, device.token, csr=make_csr(device.serial)[0]).status_code == 403


def test_no_replay_after_the_window(api, aws_mock, provisioned, settings):
    device, key, _, _ = provisioned()
    Certificate.objects.update(issued_at=timezone.now() - timedelta(seconds=settings.CVM_REPLAY_WINDOW_SECONDS + 1))

    assert vend(api, device.serial, device.token, csr=make_csr(device.serial, key=key)[0]).status_code == 403


def test_no_replay_once_revoked(api, aws_mock, provisioned):
    device, key, _, _ = provisioned()
    device_revoke(serial=device.serial, reason="stolen", actor="sam")

    assert vend(api, device.serial, device.token, csr=make_csr(device.serial, key=key)[0]).status_code == 403


# --- §3.2 rotation ----------------------------------------------------------------------------------


def test_rotation_then_confirmation_leaves_the_new_certificate_alone_active(api, aws_mock, provisioned):
    device, key, _, first = provisioned()

    started, new_key, _ = rotate(api, device.serial, key)

    assert started.status_code == 201, started.json()
    body = started.json()
    assert body["previous_certificate_id"] == first["certificate_id"]
    assert "private_key_pem" not in body
    assert body["confirm_by"].endswith("Z")
    assert statuses(aws_mock) == {first["certificate_id"]: "ACTIVE", body["certificate_id"]: "ACTIVE"}
    record = Device.objects.get(serial=device.serial)
    assert record.state == DeviceState.ACTIVE
    assert record.pending_certificate.certificate_id == body["certificate_id"]
    call_command("sync_dynamodb", "--once", stdout=open("/dev/null", "w"))  # noqa: SIM115
    item = aws_mock.dynamodb.get_item(TableName="cvm-device-association", Key={"productId": {"S": device.serial}})
    assert item["Item"]["pendingCertID"] == {"S": body["certificate_id"]}

    confirmed = confirm(api, device.serial, new_key)

    assert confirmed.status_code == 200
    assert confirmed.json() == {
        "serial": device.serial,
        "certificate_id": body["certificate_id"],
        "revoked_certificate_id": first["certificate_id"],
    }
    assert statuses(aws_mock) == {first["certificate_id"]: "REVOKED", body["certificate_id"]: "ACTIVE"}
    principals = aws_mock.iot.list_thing_principals(thingName=device.serial)["principals"]
    assert principals == [body["certificate_arn"]], "the old certificate is detached"
    assert aws_mock.policies_of(first["certificate_arn"]) == []
    assert confirm(api, device.serial, new_key).json() == confirmed.json(), "confirming twice answers the same"
    call_command("sync_dynamodb", "--once", stdout=open("/dev/null", "w"))  # noqa: SIM115
    item = aws_mock.dynamodb.get_item(TableName="cvm-device-association", Key={"productId": {"S": device.serial}})
    assert "pendingCertID" not in item["Item"]
    assert item["Item"]["certID"] == {"S": body["certificate_id"]}
    kinds = list(AuditEvent.objects.filter(serial=device.serial).order_by("id").values_list("kind", flat=True))
    assert kinds[-4:] == [
        AuditKind.ROTATION_STARTED,
        AuditKind.ROTATION_ISSUED,
        AuditKind.ROTATION_STEP_STARTED,
        AuditKind.ROTATION_CONFIRMED,
    ]


def test_the_same_key_asking_again_while_pending_gets_the_same_answer(api, aws_mock, provisioned):
    device, key, _, _ = provisioned()
    started, new_key, _ = rotate(api, device.serial, key)

    again, _, _ = rotate(api, device.serial, key, new_key=new_key)

    assert again.status_code == 200
    assert again.json() == started.json()
    assert len(aws_mock.all_certificates()) == 2


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ES384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="ES512"),
        pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="RS256"),
    ],
)
def test_every_accepted_algorithm_proves_possession(api, aws_mock, provisioned, key):
    device, current, _, _ = provisioned(key=key())
    started, _, _ = rotate(api, device.serial, current)
    assert started.status_code == 201, started.json()


def test_a_ps256_proof_from_an_rsa_key(api, aws_mock, provisioned):
    device, current, _, _ = provisioned(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    started, _, _ = rotate(api, device.serial, current, alg="PS256")
    assert started.status_code == 201, started.json()


def _bad_proofs(key, serial, csr):
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_csr, _ = make_csr(serial)
    reused = proof(key, serial, csr=csr, jti="a-reused-jti-0000000000")
    return {
        "wrong key": proof(other_key, serial, csr=csr),
        "wrong audience": proof(key, serial, csr=csr, audience="cvm-confirm"),
        "stale iat": proof(key, serial, csr=csr, iat=int(time.time()) - 310),
        "future iat": proof(key, serial, csr=csr, iat=int(time.time()) + 310),
        "bound to another CSR": proof(key, serial, csr=other_csr),
        "another device's claims": proof(key, "SN-OTHER", csr=csr),
        "short jti": proof(key, serial, csr=csr, jti="short"),
        "alg none": jwt.encode({"sub": serial, "aud": "cvm-rotate", "iat": int(time.time())}, None, algorithm="none"),
        "garbage": "not.a.jwt",
        "reused jti": reused,
    }


def test_every_bad_proof_gets_the_identical_403_and_issues_nothing(api, aws_mock, provisioned, settings):
    settings.CVM_FAILED_TOKENS_PER_SERIAL = 100
    device, key, _, first = provisioned()
    csr, _ = make_csr(device.serial)
    bad = _bad_proofs(key, device.serial, csr)
    from provisioning.models import ProofJti

    # A jti a proof already spent on this device (a captured proof sent again).
    ProofJti.objects.create(device=device.device, jti="a-reused-jti-0000000000", used_at=timezone.now())

    for name, token in bad.items():
        response = api.post(ROTATE_URL, {"serial": device.serial, "csr": csr, "proof": token}, format="json")
        assert (response.status_code, response.json()) == (403, PROOF_REFUSED), name

    assert list(statuses(aws_mock)) == [first["certificate_id"]]
    assert AuditEvent.objects.filter(kind=AuditKind.ROTATE_REFUSED).count() == len(bad)


def test_an_unknown_serial_and_an_inactive_device_get_the_same_403(api, aws_mock, provisioned, make_device):
    _, key, _, _ = provisioned()
    make_device("SN-NEW")
    for serial in ("SN-NOBODY", "SN-NEW"):
        response, _, _ = rotate(api, serial, key)
        assert (response.status_code, response.json()) == (403, PROOF_REFUSED)


def test_failed_proofs_count_toward_the_limits(api, aws_mock, provisioned, settings):
    settings.CVM_FAILED_TOKENS_PER_SERIAL = 3
    device, _, _, _ = provisioned()
    stranger = ec.generate_private_key(ec.SECP256R1())
    codes = [rotate(api, device.serial, stranger)[0].status_code for _ in range(4)]
    assert codes == [403, 403, 403, 429]


def test_a_csr_for_the_current_key_is_a_400(api, aws_mock, provisioned):
    device, key, _, _ = provisioned()
    response, _, _ = rotate(api, device.serial, key, new_key=key)
    assert response.status_code == 400
    assert "csr" in response.json()


@pytest.mark.django_db(transaction=True)
def test_thirty_concurrent_rotations_produce_one_pending_certificate(api, aws_mock, provisioned, settings):
    settings.CVM_FAILED_TOKENS_PER_SERIAL = 1000
    device, key, _, first = provisioned()
    barrier = threading.Barrier(30)
    results: list[int] = []

    def rotate_once() -> None:
        from rest_framework.test import APIClient

        try:
            new_key = ec.generate_private_key(ec.SECP256R1())
            csr, _ = make_csr(device.serial, key=new_key)
            body = {"serial": device.serial, "csr": csr, "proof": proof(key, device.serial, csr=csr)}
            barrier.wait()
            results.append(APIClient().post(ROTATE_URL, body, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=rotate_once) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert 201 in results
    assert set(results) <= {201, 409}, results
    record = Device.objects.get(serial=device.serial)
    pending = record.pending_certificate
    assert pending is not None
    active = {cid for cid, status in statuses(aws_mock).items() if status == "ACTIVE"}
    assert active == {first["certificate_id"], pending.certificate_id}, "never more than the two"


@pytest.mark.parametrize(
    "operation", ["CreateCertificateFromCsr", "AttachPolicy", "AttachThingPrincipal", "UpdateCertificate"]
)
def test_an_aws_fault_during_rotation_leaves_the_old_certificate_current(
    api, aws_mock, aws_fault, provisioned, operation
):
    device, key, _, first = provisioned()
    aws_fault(operation)

    response, _, _ = rotate(api, device.serial, key)

    assert response.status_code == 503
    assert {cid for cid, s in statuses(aws_mock).items() if s == "ACTIVE"} == {first["certificate_id"]}
    record = Device.objects.get(serial=device.serial)
    assert record.current_certificate.certificate_id == first["certificate_id"]
    assert record.pending_certificate is None
    assert record.claim_id is None


def test_an_unconfirmed_rotation_is_rolled_back_after_the_grace_period(api, aws_mock, provisioned, settings):
    device, key, _, first = provisioned()
    started, new_key, _ = rotate(api, device.serial, key)
    pending_id = started.json()["certificate_id"]

    assert rotations_expire().rolled_back == [], "not before the grace period"
    later = timezone.now() + timedelta(seconds=settings.CVM_ROTATION_GRACE_SECONDS + 1)
    assert rotations_expire(now=later).rolled_back == [device.serial]
    assert rotations_expire(now=later).rolled_back == [], "idempotent"

    assert statuses(aws_mock) == {first["certificate_id"]: "ACTIVE", pending_id: "REVOKED"}
    record = Device.objects.get(serial=device.serial)
    assert record.current_certificate.certificate_id == first["certificate_id"]
    assert record.pending_certificate is None
    assert Certificate.objects.get(certificate_id=pending_id).status == CertificateStatus.REVOKED
    assert (confirm(api, device.serial, new_key).status_code, "too late") == (403, "too late")


def test_expire_rotations_command(api, aws_mock, provisioned, settings, capsys):
    device, key, _, _ = provisioned()
    rotate(api, device.serial, key)
    settings.CVM_ROTATION_GRACE_SECONDS = 0

    call_command("expire_rotations")

    assert f"rolled back the rotation of {device.serial}" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["revoke", "reset"])
def test_revoke_and_reset_during_a_pending_rotation_revoke_both_certificates(api, aws_mock, provisioned, action):
    device, key, _, _ = provisioned()
    rotate(api, device.serial, key)

    if action == "revoke":
        device_revoke(serial=device.serial, reason="stolen", actor="sam")
    else:
        device_reset(serial=device.serial, actor="sam")

    assert set(statuses(aws_mock).values()) == {"REVOKED"}
    record = Device.objects.get(serial=device.serial)
    assert record.pending_certificate is None
    assert set(Certificate.objects.values_list("status", flat=True)) == {CertificateStatus.REVOKED}


def test_a_second_rotation_with_another_key_replaces_the_pending_one(api, aws_mock, provisioned):
    device, key, _, first = provisioned()
    started, _, _ = rotate(api, device.serial, key)
    second, newer_key, _ = rotate(api, device.serial, key)

    assert second.status_code == 201
    assert statuses(aws_mock) == {
        first["certificate_id"]: "ACTIVE",
        started.json()["certificate_id"]: "REVOKED",
        second.json()["certificate_id"]: "ACTIVE",
    }
    assert confirm(api, device.serial, newer_key).status_code == 200


def test_the_vend_url_still_refuses_a_rotated_device_token(api, aws_mock, provisioned):
    device, key, _, _ = provisioned()
    _, new_key, _ = rotate(api, device.serial, key)
    confirm(api, device.serial, new_key)

    assert api.post(VEND_URL, {"serial": device.serial, "token": device.token}, format="json").status_code == 403


# --- reconcile knows the two-certificate state ---------------------------------------------------------


def _reconcile() -> list[str]:
    from provisioning.reconcile import reconcile_find, reconcile_fix

    differences = reconcile_find()
    assert all(result.error is None for result in reconcile_fix(differences)), differences
    return [d.kind for d in differences if d.serial.startswith("SN-ROT")]


def test_a_pending_rotation_is_no_difference(api, aws_mock, provisioned):
    device, key, _, _ = provisioned()
    rotate(api, device.serial, key)
    call_command("sync_dynamodb", "--once", stdout=open("/dev/null", "w"))  # noqa: SIM115

    from provisioning.reconcile import reconcile_find

    assert [d for d in reconcile_find() if d.serial == device.serial] == []


def test_reconcile_completes_a_confirmation_that_stopped_half_way(api, aws_mock, provisioned):
    device, key, _, first = provisioned()
    started, _, _ = rotate(api, device.serial, key)
    # The confirm revoked the old certificate in AWS, then the process died before recording it.
    aws_mock.iot.update_certificate(certificateId=first["certificate_id"], newStatus="REVOKED")

    assert "rotation_half_confirmed" in _reconcile()

    record = Device.objects.get(serial=device.serial)
    assert record.current_certificate.certificate_id == started.json()["certificate_id"]
    assert record.pending_certificate is None
    assert record.state == DeviceState.ACTIVE


def test_reconcile_rolls_back_a_pending_certificate_lost_in_aws(api, aws_mock, provisioned):
    device, key, _, first = provisioned()
    started, _, _ = rotate(api, device.serial, key)
    aws_mock.iot.update_certificate(certificateId=started.json()["certificate_id"], newStatus="REVOKED")

    assert "pending_certificate_lost" in _reconcile()

    record = Device.objects.get(serial=device.serial)
    assert record.current_certificate.certificate_id == first["certificate_id"]
    assert record.pending_certificate is None


def test_reconcile_releases_a_rotation_claim_left_by_a_dead_process(api, aws_mock, provisioned):
    device, _, _, first = provisioned()
    Device.objects.filter(serial=device.serial).update(
        claim_id=uuid.uuid4(), claimed_at=timezone.now() - timedelta(hours=1)
    )
    leftover = aws_mock.iot.create_keys_and_certificate(setAsActive=True)
    aws_mock.iot.attach_thing_principal(thingName=device.serial, principal=leftover["certificateArn"])

    kinds = _reconcile()

    assert "stale_rotation_claim" in kinds
    assert Device.objects.get(serial=device.serial).claim_id is None
    assert {cid for cid, s in statuses(aws_mock).items() if s == "ACTIVE"} == {first["certificate_id"]}
