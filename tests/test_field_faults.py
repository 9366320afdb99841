"""What devices, operators and attackers really send: each kind of field fault, with its siblings."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import pkgutil
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import CommandError
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning import metrics
from provisioning.models import AuditEvent, AuditKind, Certificate, Device, DeviceState, Product
from provisioning.services import ServiceError, device_reset, tokens_issue

from .conftest import VEND_URL, vend
from .settings_reload import settings_under

DATA = Path(__file__).parent / "data"

# --- 1. Options that take several values keep every value ----------------------------------------


def _portal_commands() -> dict[str, object]:
    import provisioning.management.commands as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    assert set(names) <= set(get_commands()), "every module under commands/ is a command"
    return {name: load_command_class("provisioning", name) for name in names}


def test_every_repeatable_option_of_every_command_keeps_all_its_values():
    walked = 0
    for name, command in _portal_commands().items():
        parser = command.create_parser("manage.py", name)
        for action in parser._actions:
            if action.option_strings and action.nargs in ("+", "*"):
                walked += 1
                assert isinstance(action, argparse._ExtendAction), (
                    f"{name} {action.option_strings[0]}: a repeated option would keep only its last values"
                )
    assert walked >= 1


@pytest.mark.parametrize(
    "spelling",
    [
        ["--serial", "SN-1", "SN-2", "SN-3"],
        ["--serial", "SN-1", "--serial", "SN-2", "--serial", "SN-3"],
        ["--serial", "SN-1", "SN-2", "--serial", "SN-3"],
    ],
)
def test_issue_tokens_issues_every_serial_in_every_spelling(tmp_path, make_device, spelling):
    for serial in ("SN-1", "SN-2", "SN-3"):
        make_device(serial, with_token=False)
    out = tmp_path / "tokens.csv"

    call_command("issue_tokens", *spelling, "--out", str(out))

    with open(out, newline="") as handle:
        assert sorted(row["serial"] for row in csv.DictReader(handle)) == ["SN-1", "SN-2", "SN-3"]


def test_revoke_and_reset_take_several_serials(tmp_path, api, aws_mock, make_device):
    devices = [make_device(f"SN-{i}") for i in range(3)]
    for device in devices:
        assert vend(api, device.serial, device.token).status_code == 201

    call_command("revoke", "SN-0", "SN-1", "--reason", "stolen")
    assert set(Device.objects.filter(state=DeviceState.REVOKED).values_list("serial", flat=True)) == {"SN-0", "SN-1"}

    out = tmp_path / "reset.csv"
    call_command("reset", "SN-1", "SN-2", "--out", str(out), "--reason", "returned")
    with open(out, newline="") as handle:
        assert sorted(row["serial"] for row in csv.DictReader(handle)) == ["SN-1", "SN-2"]
    assert set(Device.objects.filter(state=DeviceState.TOKEN_ISSUED).values_list("serial", flat=True)) == {
        "SN-1",
        "SN-2",
    }


def test_revoke_with_one_unknown_serial_revokes_none(api, aws_mock, make_device):
    device = make_device("SN-1")
    assert vend(api, device.serial, device.token).status_code == 201

    with pytest.raises(CommandError, match="unknown serial SN-TYPO"):
        call_command("revoke", "SN-1", "SN-TYPO", "--reason", "stolen")

    assert Device.objects.get(serial="SN-1").state == DeviceState.ACTIVE


def test_reset_with_one_ineligible_serial_resets_none(tmp_path, api, aws_mock, make_device):
    device = make_device("SN-1")
    assert vend(api, device.serial, device.token).status_code == 201
    make_device("SN-2")  # token issued, no certificate: reset does not apply
    out = tmp_path / "reset.csv"

    with pytest.raises(CommandError, match="SN-2 is token_issued; reset applies to active or revoked"):
        call_command("reset", "SN-1", "SN-2", "--out", str(out))

    assert Device.objects.get(serial="SN-1").state == DeviceState.ACTIVE
    assert not out.exists()


# --- 2. JSON values are never coerced -------------------------------------------------------------

NON_STRINGS = (
    st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.lists(st.text(max_size=5), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["serial", "token", "csr"]), value=NON_STRINGS)
def test_every_vend_field_must_be_a_json_string(api, field, value):
    body = {"serial": "SN-1", "token": "t" * 32, field: value}

    response = api.post(VEND_URL, json.dumps(body), content_type="application/json")

    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED).exists(), "a malformed request is no failure"


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["serialNumber", "deviceToken"]), value=NON_STRINGS)
def test_every_legacy_field_must_be_a_json_string(api, field, value):
    from django.test import override_settings

    body = {"serialNumber": "SN-1", "deviceToken": "t" * 32, field: value}
    with override_settings(CVM_LEGACY_API=True):
        response = api.post("/getcert", json.dumps(body), content_type="application/json")

    assert response.status_code == 400
    assert field in response.json()


def test_a_numeric_serial_does_not_match_the_device_with_that_name(api, aws_mock, make_device):
    device = make_device("123456")

    response = api.post(VEND_URL, {"serial": 123456, "token": device.token}, format="json")

    assert response.status_code == 400
    assert response.json() == {"serial": ["must be a JSON string"]}
    assert Device.objects.get(serial="123456").state == DeviceState.TOKEN_ISSUED


# --- 3. and 4. CSRs: the legacy label, and refusals that say what to fix ------------------------


def _csr(serial: str, key, algorithm=None) -> str:
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)])
    )
    return request.sign(key, algorithm or hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_a_csr_labelled_new_certificate_request_is_accepted_and_sent_with_the_standard_label(
    api, aws_mock, make_device, monkeypatch
):
    from provisioning.aws import iot

    device = make_device()
    legacy = _csr(device.serial, ec.generate_private_key(ec.SECP256R1())).replace(
        "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"
    )
    sent: list[str] = []
    real_create = iot.certificate_create

    def recording_create(*, csr_pem):
        sent.append(csr_pem)
        return real_create(csr_pem=csr_pem)

    monkeypatch.setattr(iot, "certificate_create", recording_create)

    response = vend(api, device.serial, device.token, csr=legacy)

    assert response.status_code == 201, response.json()
    assert sent[0].startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    assert sent[0].rstrip().endswith("-----END CERTIFICATE REQUEST-----")


def test_a_csr_with_mismatched_labels_is_refused(api, db):
    pem = _csr("SN-1", ec.generate_private_key(ec.SECP256R1())).replace(
        "BEGIN CERTIFICATE REQUEST", "BEGIN NEW CERTIFICATE REQUEST"
    )
    response = vend(api, "SN-1", "t", csr=pem)
    assert response.status_code == 400


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _sha1_signed_csr(serial: str) -> str:
    """A valid PKCS#10 request signed with SHA-1, as old firmware toolchains make them.

    cryptography no longer signs requests with SHA-1, so the request is assembled here: the
    CertificationRequestInfo of a normal request, signed again with RSA PKCS#1 v1.5 over SHA-1.
    """
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = x509.load_pem_x509_csr(_csr(serial, key).encode()).tbs_certrequest_bytes
    signature = key.sign(info, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - the weak hash under test
    sha1_with_rsa = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010105")) + b"\x05\x00")
    der = _der(0x30, info + sha1_with_rsa + _der(0x03, b"\x00" + signature))
    # The signature is valid (cryptography's is_signature_valid says False for any SHA-1 request).
    key.public_key().verify(signature, info, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()


def test_a_sha1_signed_csr_is_refused_saying_sha1(api, db):
    pem = _sha1_signed_csr("SN-1")

    response = vend(api, "SN-1", "t", csr=pem)

    assert response.status_code == 400
    assert response.json() == {
        "csr": ["CSR is signed with SHA-1, which AWS IoT does not accept; sign it with SHA-256 or stronger"]
    }


def _stored_csr(name: str) -> str:
    """A request for a big RSA key, made once and kept in tests/data: generating a 6144- or 8200-bit key
    takes from seconds to over half a minute, a different time on every run. Each was made with
    `openssl req -new -newkey rsa:BITS -nodes -keyout /dev/null -subj /CN=SERIAL -sha256`: a real key,
    a valid signature, and the private key thrown away."""
    return (DATA / name).read_text()


@pytest.mark.parametrize(
    "csr_for",
    [
        pytest.param(lambda serial: _csr(serial, ec.generate_private_key(ec.SECP521R1())), id="EC-P-521"),
        pytest.param(lambda serial: _csr(serial, ec.generate_private_key(ec.SECP384R1())), id="EC-P-384"),
        pytest.param(lambda serial: _stored_csr(f"csr-rsa-6144-{serial}.pem"), id="RSA-6144"),
    ],
)
def test_keys_aws_iot_accepts_are_accepted(api, aws_mock, make_device, csr_for):
    device = make_device("SN-KEY-SIZES")
    response = vend(api, device.serial, device.token, csr=csr_for(device.serial))
    assert response.status_code == 201, response.json()


def test_rsa_above_8192_bits_is_refused_with_its_size(api, db):
    csr = _stored_csr("csr-rsa-8200-SN-1.pem")
    assert x509.load_pem_x509_csr(csr.encode()).is_signature_valid  # refused for its size alone
    response = vend(api, "SN-1", "t", csr=csr)
    assert response.json() == {"csr": ["RSA key must be 2048 to 8192 bits, not 8200"]}


# --- 5. A thing that already holds a certificate the database never recorded ---------------------


def test_a_certificate_the_database_never_recorded_is_revoked_before_the_new_one_is_activated(
    api, aws_mock, make_device
):
    device = make_device()
    iot = aws_mock.iot
    iot.create_thing(thingName=device.serial)
    stray = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName=device.serial, principal=stray["certificateArn"])

    response = vend(api, device.serial, device.token)

    assert response.status_code == 201
    statuses = {c["certificateId"]: c["status"] for c in aws_mock.all_certificates()}
    assert statuses == {stray["certificateId"]: "REVOKED", response.json()["certificate_id"]: "ACTIVE"}
    principals = iot.list_thing_principals(thingName=device.serial)["principals"]
    assert principals == [response.json()["certificate_arn"]], "the stray is detached from the thing"
    issued = AuditEvent.objects.get(kind=AuditKind.CERTIFICATE_ISSUED)
    assert issued.data["strays_revoked"] == [stray["certificateId"]]
    assert not Certificate.objects.filter(certificate_id=stray["certificateId"]).exists(), "never adopted"


def test_an_inactive_leftover_on_the_thing_is_deleted(api, aws_mock, make_device):
    device = make_device()
    iot = aws_mock.iot
    iot.create_thing(thingName=device.serial)
    leftover = iot.create_keys_and_certificate(setAsActive=False)
    iot.attach_thing_principal(thingName=device.serial, principal=leftover["certificateArn"])

    response = vend(api, device.serial, device.token)

    assert response.status_code == 201
    assert [c["certificateId"] for c in aws_mock.all_certificates()] == [response.json()["certificate_id"]]


def test_when_the_stray_cannot_be_revoked_nothing_is_activated(api, aws_mock, aws_fault, make_device):
    device = make_device()
    iot = aws_mock.iot
    iot.create_thing(thingName=device.serial)
    stray = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName=device.serial, principal=stray["certificateArn"])
    aws_fault("DetachThingPrincipal", times=3)  # the stray's detach, with its retries

    response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    assert [c["certificateId"] for c in aws_mock.active_certificates()] == [], "the stray is REVOKED first"
    assert len(aws_mock.all_certificates()) == 1, "the new certificate was withdrawn"
    assert Device.objects.get(serial=device.serial).state == DeviceState.TOKEN_ISSUED


# --- 6. Permanent AWS refusals are visible --------------------------------------------------------


def test_a_missing_policy_is_logged_as_an_error_counted_and_shown_on_the_dashboard(
    api, aws_mock, make_device, caplog, client, django_user_model
):
    from django.conf import settings as django_settings

    aws_mock.iot.delete_policy(policyName=django_settings.CVM_IOT_POLICY_NAME)
    device = make_device()
    before = metrics.AWS_ERRORS.labels("AttachPolicy", "ResourceNotFoundException", "configuration")._value.get()

    with caplog.at_level(logging.WARNING, logger="provisioning.aws"):
        response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "provisioning.aws"]
    assert [(r.operation, r.code, r.error_kind) for r in errors] == [
        ("AttachPolicy", "ResourceNotFoundException", "configuration")
    ]
    after = metrics.AWS_ERRORS.labels("AttachPolicy", "ResourceNotFoundException", "configuration")._value.get()
    assert after == before + 1
    failure = AuditEvent.objects.get(kind=AuditKind.VEND_FAILED)
    assert failure.data["error_kind"] == "configuration"

    admin = django_user_model.objects.create_superuser("boss", "", "a-long-password-1")
    client.force_login(admin)
    page = client.get("/admin/").content.decode()
    assert "AWS refused: check the configuration" in page
    assert "AttachPolicy ResourceNotFoundException" in page


def test_a_transient_failure_is_a_warning_not_an_error(api, aws_mock, aws_fault, make_device, caplog):
    device = make_device()
    aws_fault("AttachPolicy", code="ThrottlingException", status=400)

    with caplog.at_level(logging.WARNING, logger="provisioning.aws"):
        assert vend(api, device.serial, device.token).status_code == 503

    records = [r for r in caplog.records if getattr(r, "operation", "") == "AttachPolicy"]
    assert records
    assert all(r.levelno == logging.WARNING and r.error_kind == "transient" for r in records)


# --- 7. One token lifetime rule, checked before anything changes ----------------------------------


@pytest.mark.parametrize("ttl", ["0", "-5", "3651", "99999999", "x"])
def test_issue_tokens_refuses_a_bad_lifetime_before_anything_changes(tmp_path, make_device, ttl):
    make_device("SN-1", with_token=False)
    out = tmp_path / "tokens.csv"

    with pytest.raises(CommandError, match="ttl-days"):
        call_command("issue_tokens", "--serial", "SN-1", "--out", str(out), "--ttl-days", ttl)

    assert not out.exists()
    assert Device.objects.get(serial="SN-1").state == DeviceState.REGISTERED


@pytest.mark.parametrize("ttl", ["0", "-5", "99999999"])
def test_reset_refuses_a_bad_lifetime_and_leaves_the_certificate_alone(tmp_path, api, aws_mock, make_device, ttl):
    device = make_device("SN-1")
    assert vend(api, device.serial, device.token).status_code == 201
    out = tmp_path / "reset.csv"

    with pytest.raises(CommandError, match="ttl-days"):
        call_command("reset", "SN-1", "--out", str(out), "--ttl-days", ttl)

    assert Device.objects.get(serial="SN-1").state == DeviceState.ACTIVE
    assert [c["status"] for c in aws_mock.active_certificates()] == ["ACTIVE"]
    assert not out.exists()


@pytest.mark.parametrize("ttl", [0, -5, 3651, 99999999])
def test_the_services_refuse_a_bad_lifetime_before_anything_changes(api, aws_mock, make_device, ttl):
    device = make_device("SN-1")
    assert vend(api, device.serial, device.token).status_code == 201
    make_device("SN-2", with_token=False)

    with pytest.raises(ServiceError, match="token lifetime must be 1 to 3650 days"):
        device_reset(serial="SN-1", actor="test", ttl_days=ttl)
    with pytest.raises(ServiceError, match="token lifetime must be 1 to 3650 days"):
        tokens_issue(serials=["SN-2"], actor="test", ttl_days=ttl)

    assert Device.objects.get(serial="SN-1").state == DeviceState.ACTIVE
    assert Device.objects.get(serial="SN-2").state == DeviceState.REGISTERED


def test_the_admin_form_refuses_a_lifetime_over_ten_years():
    from provisioning.admin import TtlForm

    assert not TtlForm(data={"ttl_days": 3651}).is_valid()
    assert TtlForm(data={"ttl_days": 3650}).is_valid()


# --- 8. A fresh token is not locked out by failures against the old one ---------------------------


def test_a_new_token_is_not_locked_out_by_failures_against_the_old_one(api, aws_mock, make_device, settings):
    settings.CVM_FAILED_TOKENS_PER_SERIAL = 3
    device = make_device("SN-1")
    for _ in range(3):
        assert vend(api, "SN-1", "wrong-token-" + "x" * 20).status_code == 403
    assert vend(api, "SN-1", device.token).status_code == 429, "the limit holds for the old token"

    fresh = tokens_issue(serials=["SN-1"], actor="test")[0]

    assert vend(api, "SN-1", fresh.token).status_code == 201


# --- 14. Advice that works --------------------------------------------------------------------------


def test_a_busy_device_is_told_to_retry_when_the_claim_can_really_be_recovered(api, make_device, settings):
    settings.CVM_CLAIM_TIMEOUT_SECONDS = 120
    device = make_device("SN-1")
    Device.objects.filter(serial="SN-1").update(
        state=DeviceState.ISSUING, claimed_at=timezone.now() - timedelta(seconds=20)
    )

    response = vend(api, "SN-1", device.token)

    assert response.status_code == 409
    assert 99 <= int(response["Retry-After"]) <= 101


def test_a_claim_made_after_the_call_began_never_advises_more_than_the_claim_timeout(make_device, settings):
    from provisioning.services.vending import claim_retry_after

    settings.CVM_CLAIM_TIMEOUT_SECONDS = 120
    make_device("SN-1")
    began = timezone.now()
    # A concurrent call claimed the device a moment after this one read the clock.
    Device.objects.filter(serial="SN-1").update(state=DeviceState.ISSUING, claimed_at=began + timedelta(seconds=0.5))

    assert claim_retry_after(Device.objects.get(serial="SN-1"), began) == 120


def test_issue_tokens_on_an_issuing_device_does_not_advise_reset(tmp_path, make_device):
    make_device("SN-1")
    Device.objects.filter(serial="SN-1").update(state=DeviceState.ISSUING, claimed_at=timezone.now())

    with pytest.raises(CommandError) as raised:
        call_command("issue_tokens", "--serial", "SN-1", "--out", str(tmp_path / "t.csv"))

    assert "use reset" not in str(raised.value)
    assert "being issued a certificate right now" in str(raised.value)


# --- 15. Names AWS would refuse are refused where they enter -------------------------------------


@pytest.mark.parametrize("product", ["Model X", "ü-sensor", "a" * 65, "semi;colon"])
def test_import_refuses_a_product_name_aws_would_refuse(tmp_path, db, product):
    source = tmp_path / "serials.csv"
    source.write_text(f'serial,product\nSN-1,"{product}"\n')

    with pytest.raises(CommandError, match="invalid row"):
        call_command("import_serials", str(source))
    with pytest.raises(CommandError, match="product name must be"):
        call_command("import_serials", str(source), "--product", product)

    assert not Device.objects.exists()
    assert not Product.objects.exists()


def test_the_admin_refuses_a_product_name_aws_would_refuse(db):
    from provisioning.admin import ImportForm

    form = ImportForm(data={"product": "Model X"}, files={})
    assert not form.is_valid()
    assert "product" in form.errors


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CVM_THING_NAME_PREFIX", "my prefix/"),
        ("CVM_IOT_POLICY_NAME", "policy with spaces"),
        ("CVM_DYNAMODB_TABLE", "t"),
        ("CVM_TOKEN_TTL_DAYS", "4000"),
    ],
)
def test_settings_aws_would_refuse_stop_the_portal_at_start(monkeypatch, variable, value):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=variable):
        settings_under(monkeypatch, DEBUG="1", **{variable: value})
