"""The device endpoint, status by status, against in-process moto (SPEC §3, §5)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import override_settings
from django.utils import timezone

from provisioning.crypto import amazon_root_ca_pem
from provisioning.models import AuditEvent, AuditKind, Certificate, Device, DeviceState, KeyOrigin

from .conftest import VEND_URL, make_csr, vend

pytestmark = pytest.mark.django_db(transaction=True)

GENERIC_403 = {"detail": "invalid serial or token"}


def assert_single_active_certificate(aws_mock, thing_name: str, policy: str = "cvm-device-policy") -> dict:
    certificates = aws_mock.thing_certificates(thing_name)
    assert [c["status"] for c in certificates] == ["ACTIVE"]
    assert aws_mock.policies_of(certificates[0]["certificateArn"]) == [policy]
    return certificates[0]


def test_server_generated_key_issues_active_attached_certificate(api, aws_mock, make_device):
    device = make_device("SN-0001")

    response = vend(api, device.serial, device.token)

    assert response.status_code == 201
    body = response.json()
    assert response["Cache-Control"].count("no-store") == 1
    assert body["serial"] == "SN-0001"
    assert body["thing_name"] == "SN-0001"
    assert body["private_key_pem"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert body["root_ca_pem"] == amazon_root_ca_pem()
    assert "Amazon Root CA 1" in x509.load_pem_x509_certificate(body["root_ca_pem"].encode()).subject.rfc4514_string()
    assert body["iot_endpoint"].endswith("amazonaws.com")
    in_aws = assert_single_active_certificate(aws_mock, "SN-0001")
    assert in_aws["certificateId"] == body["certificate_id"]
    assert in_aws["certificateArn"] == body["certificate_arn"]
    assert aws_mock.thing("SN-0001")["attributes"] == {"serial": "SN-0001", "product": "sensor"}
    stored = Device.objects.get(serial="SN-0001")
    assert stored.state == DeviceState.ACTIVE
    assert stored.current_certificate.certificate_id == body["certificate_id"]
    assert stored.current_certificate.key_origin == KeyOrigin.AWS
    assert len(stored.current_certificate.fingerprint_sha256) == 64


def test_csr_path_issues_certificate_without_returning_a_key(api, aws_mock, make_device):
    device = make_device("SN-0002")
    csr_pem, _ = make_csr("SN-0002")

    response = vend(api, device.serial, device.token, csr=csr_pem)

    assert response.status_code == 201
    body = response.json()
    assert "private_key_pem" not in body
    assert body["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert_single_active_certificate(aws_mock, "SN-0002")
    certificate = Certificate.objects.get(certificate_id=body["certificate_id"])
    assert certificate.key_origin == KeyOrigin.CSR


def test_csr_with_rsa_2048_key_is_accepted(api, aws_mock, make_device):
    from cryptography.hazmat.primitives.asymmetric import rsa

    device = make_device()
    csr_pem, _ = make_csr(device.serial, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))

    assert vend(api, device.serial, device.token, csr=csr_pem).status_code == 201


def test_replayed_token_is_refused(api, aws_mock, make_device):
    device = make_device()
    assert vend(api, device.serial, device.token).status_code == 201

    response = vend(api, device.serial, device.token)

    assert response.status_code == 403
    assert response.json() == GENERIC_403
    assert len(aws_mock.all_certificates()) == 1
    refusal = AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED).get()
    assert refusal.data == {"reason": "token_used"}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown_serial", "unknown_serial"),
        ("wrong_token", "token_wrong"),
        ("expired", "token_expired"),
        ("no_token", "no_token_issued"),
        ("revoked", "device_revoked"),
    ],
)
def test_every_refusal_has_the_same_body_and_its_real_reason_is_audited(api, aws_mock, make_device, case, reason):
    device = make_device("SN-REFUSE", with_token=case != "no_token")
    serial, token = device.serial, device.token or "x" * 32
    if case == "unknown_serial":
        serial = "SN-UNKNOWN"
    elif case == "wrong_token":
        token = "not-the-token"
    elif case == "expired":
        Device.objects.filter(serial=serial).update(token_expires_at=timezone.now() - timedelta(seconds=1))
    elif case == "revoked":
        from provisioning.services import device_revoke

        assert vend(api, serial, token).status_code == 201
        device_revoke(serial=serial, reason="stolen", actor="test")

    response = vend(api, serial, token)

    assert response.status_code == 403
    assert response.json() == GENERIC_403
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED).latest("id").data == {"reason": reason}
    assert not aws_mock.active_certificates()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "t"}, "serial"),
        ({"serial": "SN-1"}, "token"),
        ({"serial": "-leading-dash", "token": "t"}, "serial"),
        ({"serial": "x" * 65, "token": "t"}, "serial"),
        ({"serial": "SN 1", "token": "t"}, "serial"),
        ({"serial": "SN-1", "token": "t", "extra": 1}, "extra"),
        ({"serial": "SN-1", "token": "t", "csr": "not a csr"}, "csr"),
        ({"serial": "SN-1", "token": "t" * 129}, "token"),
    ],
)
def test_malformed_requests_get_field_errors(api, db, body, field):
    response = api.post(VEND_URL, body, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert isinstance(response.json()[field], list)


def test_csr_for_another_serial_is_refused(api, db):
    csr_pem, _ = make_csr("SN-OTHER")
    response = vend(api, "SN-1", "t", csr=csr_pem)
    assert response.status_code == 400
    assert response.json() == {"csr": ["CSR subject CN must equal the serial"]}


def test_weak_rsa_csr_is_refused(api, db, rsa_1024_key):
    csr_pem, _ = make_csr("SN-1", key=rsa_1024_key)
    response = vend(api, "SN-1", "t", csr=csr_pem)
    assert response.status_code == 400
    assert response.json() == {"csr": ["RSA key must be 2048 to 8192 bits, not 1024"]}


def test_csr_on_an_unsupported_curve_is_refused(api, db):
    csr_pem, _ = make_csr("SN-1", key=ec.generate_private_key(ec.SECP256K1()))
    response = vend(api, "SN-1", "t", csr=csr_pem)
    assert response.status_code == 400
    assert response.json() == {"csr": ["EC key must be on P-256, P-384 or P-521, not secp256k1"]}


def test_csr_with_a_broken_signature_is_refused(api, db):
    csr_pem, _ = make_csr("SN-1")
    other_pem, _ = make_csr("SN-1")
    # Same subject and layout, other key: swap the signature bits in the middle of the DER.
    lines = csr_pem.splitlines()
    other_lines = other_pem.splitlines()
    tampered = "\n".join([*lines[:-2], other_lines[-2], lines[-1]]) + "\n"
    response = vend(api, "SN-1", "t", csr=tampered)
    assert response.status_code == 400
    assert "csr" in response.json()


@override_settings(CVM_REQUIRE_CSR=True)
def test_server_generated_keys_are_refused_when_csr_is_required(api, aws_mock, make_device):
    device = make_device()
    response = vend(api, device.serial, device.token)
    assert response.status_code == 400
    assert response.json() == {"csr": ["a CSR is required: generate the key on the device"]}
    csr_pem, _ = make_csr(device.serial)
    assert vend(api, device.serial, device.token, csr=csr_pem).status_code == 201


def test_non_json_body_is_415(api, db):
    response = api.post(VEND_URL, "serial=SN-1&token=t", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "detail" in response.json()


def test_broken_json_is_400(api, db):
    response = api.post(VEND_URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


def test_body_over_64_kib_is_413_before_it_is_read(api, db):
    response = api.post(VEND_URL, {"serial": "SN-1", "token": "t" * (64 * 1024)}, format="json")
    assert response.status_code == 413
    assert response.json() == {"detail": "request body is larger than 65536 bytes"}
    assert "no-store" in response["Cache-Control"]


def test_request_while_another_is_being_served_is_409(api, aws_mock, make_device):
    device = make_device()
    Device.objects.filter(serial=device.serial).update(state=DeviceState.ISSUING, claimed_at=timezone.now())

    response = vend(api, device.serial, device.token)

    assert response.status_code == 409
    assert int(response["Retry-After"]) >= 1
    assert "detail" in response.json()


@override_settings(CVM_FAILED_TOKENS_PER_SERIAL=3)
def test_too_many_failed_tokens_for_a_serial_is_429_even_for_the_right_token(api, aws_mock, make_device):
    device = make_device()
    for _ in range(3):
        assert vend(api, device.serial, "wrong").status_code == 403

    response = vend(api, device.serial, device.token)

    assert response.status_code == 429
    assert 3500 < int(response["Retry-After"]) <= 3600
    assert not aws_mock.all_certificates()
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_THROTTLED, serial=device.serial).exists()


@override_settings(CVM_REQUESTS_PER_ADDRESS=5)
def test_too_many_requests_from_one_address_is_429(api, db):
    statuses = [api.post(VEND_URL, {"serial": "SN-1"}, format="json").status_code for _ in range(6)]
    assert statuses == [400] * 5 + [429]
    response = api.post(VEND_URL, {"serial": "SN-1"}, format="json")
    assert 1 <= int(response["Retry-After"]) <= 60


def test_aws_outage_is_503_and_the_token_stays_valid(api, aws_fault, make_device, aws_mock):
    device = make_device()
    aws_fault("CreateKeysAndCertificate")

    response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert Device.objects.get(serial=device.serial).state == DeviceState.TOKEN_ISSUED


def test_health_answers_when_the_database_does(api, db):
    response = api.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_schema_and_docs_are_served(api, db):
    schema = api.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/certificates" in document["paths"]
    docs = api.get("/api/docs")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()
    assert b"cdn." not in docs.content


API_METHODS = ["get", "post", "put", "patch", "delete", "options"]


@pytest.mark.parametrize("method", API_METHODS)
@pytest.mark.parametrize(
    "path", ["/api/v1/no-such-thing", "/api/v1/certificates/", "/api/", "/api", "/api/v2/certificates", "/getcert/x"]
)
def test_unknown_api_paths_answer_json_404(db, method, path):
    from django.test import Client

    response = getattr(Client(), method)(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "not found"}
    assert "no-store" in response["Cache-Control"]


@override_settings(DEBUG=True)
def test_unknown_api_paths_answer_json_even_with_debug_on(db):
    from django.test import Client

    response = Client().get("/api/v1/no-such-thing")

    assert (response.status_code, response["Content-Type"]) == (404, "application/json")
    assert b"urlpatterns" not in response.content.lower()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", VEND_URL),
        ("put", VEND_URL),
        ("post", "/api/v1/health"),
        ("delete", "/api/v1/health"),
        ("post", "/api/schema"),
        ("post", "/api/docs"),
    ],
)
def test_wrong_methods_on_api_paths_answer_json_405(db, method, path):
    from django.test import Client

    response = getattr(Client(), method)(path)

    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"detail"}
    assert response["Allow"]


@pytest.mark.parametrize("debug", [False, True])
def test_errors_raised_outside_drf_on_api_paths_answer_json_500_without_a_traceback(db, monkeypatch, settings, debug):
    from django.test import Client

    from provisioning.apis import HealthApi

    settings.DEBUG = debug

    def broken(self, request, *args, **kwargs):
        raise RuntimeError("a secret detail of the failure")

    # dispatch is where DRF's own handler would catch it; replacing it makes the error reach Django.
    monkeypatch.setattr(HealthApi, "dispatch", broken)

    response = Client(raise_request_exception=False).get("/api/v1/health")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "internal error"}
    assert b"Traceback" not in response.content
    assert b"secret detail" not in response.content
