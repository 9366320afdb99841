"""Drop-in migration from AWS's reference CVM: its device call and its DynamoDB table."""

from __future__ import annotations

import logging

import pytest
from django.core import serializers as django_serializers
from django.core.management import call_command

from provisioning.crypto import amazon_root_ca_pem, token_digest
from provisioning.models import AuditEvent, AuditKind, Certificate, Device, DeviceState

pytestmark = pytest.mark.django_db(transaction=True)

REFERENCE_KEYS = {"certificateArn", "certificateId", "certificatePem", "keyPair", "RootCA"}
LEGACY_TABLE = "DeviceInfo"


@pytest.fixture
def legacy_on(settings):
    settings.CVM_LEGACY_API = True


def test_reference_call_gets_the_reference_answer_once(client, aws_mock, make_device, legacy_on):
    device = make_device("LEG-1")

    response = client.get("/getcert", {"serialNumber": "LEG-1", "deviceToken": device.token})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == REFERENCE_KEYS
    assert set(body["keyPair"]) == {"PublicKey", "PrivateKey"}
    assert body["keyPair"]["PrivateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert body["keyPair"]["PublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert body["RootCA"] == amazon_root_ca_pem()
    assert "no-store" in response["Cache-Control"]
    in_aws = aws_mock.thing_certificates("LEG-1")
    assert [(c["certificateId"], c["status"]) for c in in_aws] == [(body["certificateId"], "ACTIVE")]
    assert aws_mock.policies_of(body["certificateArn"]) == ["cvm-device-policy"]

    again = client.get("/getcert", {"serialNumber": "LEG-1", "deviceToken": device.token})
    assert again.status_code == 403
    assert again.json() == {"detail": "invalid serial or token"}
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED, serial="LEG-1").get().data == {"reason": "token_used"}


def test_reference_call_as_a_json_post(client, aws_mock, make_device, legacy_on):
    device = make_device("LEG-2")
    response = client.post(
        "/getcert", {"serialNumber": "LEG-2", "deviceToken": device.token}, content_type="application/json"
    )
    assert response.status_code == 200
    assert set(response.json()) == REFERENCE_KEYS


def test_failures_keep_this_portals_codes_and_bodies(client, aws_mock, aws_fault, make_device, legacy_on):
    device = make_device("LEG-3")
    assert client.get("/getcert", {"serialNumber": "LEG-3", "deviceToken": "wrong"}).status_code == 403
    assert client.get("/getcert", {"serialNumber": "bad serial", "deviceToken": "x"}).status_code == 400
    aws_fault("CreateKeysAndCertificate")
    unavailable = client.get("/getcert", {"serialNumber": "LEG-3", "deviceToken": device.token})
    assert unavailable.status_code == 503
    assert int(unavailable["Retry-After"]) >= 1
    assert Device.objects.get(serial="LEG-3").state == DeviceState.TOKEN_ISSUED


def test_the_token_in_the_url_never_reaches_a_log(client, aws_mock, make_device, legacy_on, caplog):
    device = make_device("LEG-4")
    caplog.set_level(logging.DEBUG)
    client.get("/getcert", {"serialNumber": "LEG-4", "deviceToken": device.token})
    client.get("/getcert", {"serialNumber": "LEG-4", "deviceToken": device.token})  # refused, logged too
    from provisioning.logs import JsonFormatter

    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert any('"path": "/getcert"' in line for line in lines)
    assert all(device.token not in line for line in lines)


def test_without_the_setting_the_endpoint_does_not_exist(client, make_device):
    device = make_device("LEG-5")
    assert client.get("/getcert", {"serialNumber": "LEG-5", "deviceToken": device.token}).status_code == 404
    assert client.post("/getcert", {}, content_type="application/json").status_code == 404
    assert Device.objects.get(serial="LEG-5").state == DeviceState.TOKEN_ISSUED


# --- import_legacy_table ------------------------------------------------------------------------------


@pytest.fixture
def reference_table(aws_mock):
    """A table as the reference CVM's CloudFormation template makes it, with three devices."""
    aws_mock.dynamodb.create_table(
        TableName=LEGACY_TABLE,
        AttributeDefinitions=[{"AttributeName": "serialNumber", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "serialNumber", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws_mock.iot.create_thing(thingName="REF-ACTIVE")
    issued = aws_mock.iot.create_keys_and_certificate(setAsActive=True)
    aws_mock.iot.attach_thing_principal(thingName="REF-ACTIVE", principal=issued["certificateArn"])
    items = [
        {"serialNumber": {"S": "REF-NEW"}, "deviceToken": {"S": "plain-token-new-0001"}},
        {"serialNumber": {"S": "REF-ACTIVE"}, "deviceToken": {"S": "plain-token-active-02"},
         "certinfo": {"S": issued["certificateArn"]}},
        {"serialNumber": {"S": "bad serial!"}, "deviceToken": {"S": "plain-token-bad-0003"}},
    ]  # fmt: skip
    for item in items:
        aws_mock.dynamodb.put_item(TableName=LEGACY_TABLE, Item=item)
    return {"certificate": issued, "tokens": ["plain-token-new-0001", "plain-token-active-02", "plain-token-bad-0003"]}


def test_import_legacy_table_imports_once_and_never_keeps_a_plaintext_token(
    client, aws_mock, reference_table, legacy_on, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    call_command("import_legacy_table", "--table", LEGACY_TABLE, "--dry-run")
    dry = capsys.readouterr().out
    assert "would import 2 device(s) (1 with a token, 1 active, 0 revoked); 0 already known; 1 skipped" in dry
    assert Device.objects.count() == 0

    call_command("import_legacy_table", "--table", LEGACY_TABLE, "--ttl-days", "30")
    first = capsys.readouterr().out
    assert "imported 2 device(s) (1 with a token, 1 active, 0 revoked); 0 already known; 1 skipped" in first

    new = Device.objects.get(serial="REF-NEW")
    assert (new.state, new.token_digest) == (DeviceState.TOKEN_ISSUED, token_digest("plain-token-new-0001"))
    active = Device.objects.get(serial="REF-ACTIVE")
    assert active.state == DeviceState.ACTIVE
    assert active.current_certificate.certificate_id == reference_table["certificate"]["certificateId"]
    assert Certificate.objects.get().fingerprint_sha256
    assert AuditEvent.objects.filter(kind=AuditKind.LEGACY_IMPORTED).count() == 2

    call_command("import_legacy_table", "--table", LEGACY_TABLE)
    second = capsys.readouterr().out
    assert "imported 0 device(s) (0 with a token, 0 active, 0 revoked); 2 already known; 1 skipped" in second
    assert Device.objects.count() == 2

    # The imported token works once through the reference call; the active device's token is spent.
    assert client.get("/getcert", {"serialNumber": "REF-NEW", "deviceToken": "plain-token-new-0001"}).status_code == 200
    assert (
        client.get("/getcert", {"serialNumber": "REF-ACTIVE", "deviceToken": "plain-token-active-02"}).status_code
        == 403
    )

    call_command("sync_dynamodb", "--once")
    capsys.readouterr()
    dump = django_serializers.serialize("json", [*Device.objects.all(), *AuditEvent.objects.all()])
    table = str(list(aws_mock.table("cvm-device-association").values()))
    logs = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    for token in reference_table["tokens"]:
        assert token not in dump
        assert token not in table
        assert token not in logs
