"""The management commands of SPEC §7: import, tokens, revoke, reset, bootstrap, verify_audit."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from provisioning.crypto import token_digest
from provisioning.models import AuditEvent, AuditKind, Certificate, CertificateStatus, Device, DeviceState, Product

from .conftest import vend

pytestmark = pytest.mark.django_db(transaction=True)


def read_tokens(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_import_serials_registers_every_row_and_reports_counts(tmp_path, capsys):
    source = write(tmp_path, "serials.csv", "serial,product\nSN-1,sensor\nSN-2,\nSN-3,gateway\n")

    call_command("import_serials", str(source), "--product", "meter")

    assert capsys.readouterr().out.strip() == "imported 3 new serial(s); 0 already known; 3 new product(s)"
    assert dict(Device.objects.values_list("serial", "product__name")) == {
        "SN-1": "sensor",
        "SN-2": "meter",
        "SN-3": "gateway",
    }
    assert set(Device.objects.values_list("state", flat=True)) == {DeviceState.REGISTERED}
    assert AuditEvent.objects.filter(kind=AuditKind.DEVICE_REGISTERED).count() == 3


def test_reimporting_known_serials_is_not_an_error(tmp_path, capsys):
    source = write(tmp_path, "serials.csv", "serial\nSN-1\nSN-2\n")
    call_command("import_serials", str(source))
    capsys.readouterr()

    call_command("import_serials", str(write(tmp_path, "more.csv", "serial\nSN-2\nSN-3\n")))

    assert capsys.readouterr().out.strip() == "imported 1 new serial(s); 1 already known; 0 new product(s)"
    assert Device.objects.count() == 3
    assert Product.objects.get().name == "default"


def test_import_with_a_bad_row_imports_nothing_and_names_each_line(tmp_path, capsys):
    source = write(tmp_path, "serials.csv", "serial\nSN-1\nbad serial\nSN-1\n-x\n")

    with pytest.raises(CommandError, match="3 invalid row"):
        call_command("import_serials", str(source))

    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "line 3: 'bad serial' is not a valid serial",
        "line 4: serial SN-1 repeats line 2",
        "line 5: '-x' is not a valid serial",
    ]
    assert Device.objects.count() == 0


@pytest.mark.parametrize("content", ["", "name\nSN-1\n", "serial,product,bad name\nSN-1,a,b\n"])
def test_import_refuses_a_file_without_the_right_header(tmp_path, content):
    with pytest.raises(CommandError):
        call_command("import_serials", str(write(tmp_path, "s.csv", content)))
    assert Device.objects.count() == 0


def test_import_of_a_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_serials", str(tmp_path / "missing.csv"))


def test_issue_tokens_writes_a_0600_file_and_stores_only_digests(tmp_path, make_device):
    make_device("SN-1", with_token=False)
    make_device("SN-2", with_token=False)
    out = tmp_path / "tokens.csv"

    call_command("issue_tokens", "--all-registered", "--out", str(out), "--ttl-days", "7")

    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    rows = read_tokens(out)
    assert [row["serial"] for row in rows] == ["SN-1", "SN-2"]
    for row in rows:
        assert len(row["token"]) >= 32  # 192 random bits, URL-safe base64
        device = Device.objects.get(serial=row["serial"])
        assert device.state == DeviceState.TOKEN_ISSUED
        assert device.token_digest == token_digest(row["token"])
        assert row["token"] not in device.token_digest
        assert row["expires_at"].endswith("Z")
    assert len({row["token"] for row in rows}) == 2


def test_a_new_token_replaces_an_unused_one(tmp_path, api, aws_mock, make_device):
    device = make_device("SN-1")
    out = tmp_path / "tokens.csv"

    call_command("issue_tokens", "--serial", "SN-1", "--out", str(out))

    new_token = read_tokens(out)[0]["token"]
    assert vend(api, "SN-1", device.token).status_code == 403
    assert vend(api, "SN-1", new_token).status_code == 201


def test_issue_tokens_refuses_an_active_device_and_writes_no_file(tmp_path, api, aws_mock, make_device):
    device = make_device("SN-1")
    assert vend(api, "SN-1", device.token).status_code == 201
    out = tmp_path / "tokens.csv"

    with pytest.raises(CommandError, match="device SN-1 is active; use reset"):
        call_command("issue_tokens", "--serial", "SN-1", "--out", str(out))

    assert not out.exists()


def test_issue_tokens_never_overwrites_a_file(tmp_path, make_device):
    make_device("SN-1", with_token=False)
    out = write(tmp_path, "tokens.csv", "precious\n")

    with pytest.raises(CommandError, match="already exists"):
        call_command("issue_tokens", "--serial", "SN-1", "--out", str(out))

    assert out.read_text() == "precious\n"
    assert Device.objects.get(serial="SN-1").state == DeviceState.REGISTERED


def test_issue_tokens_for_an_unknown_serial_issues_nothing(tmp_path, make_device):
    make_device("SN-1", with_token=False)
    with pytest.raises(CommandError, match="unknown serial SN-404"):
        call_command("issue_tokens", "--serial", "SN-1", "SN-404", "--out", str(tmp_path / "t.csv"))
    assert Device.objects.get(serial="SN-1").state == DeviceState.REGISTERED


def test_revoke_revokes_in_aws_and_the_database(api, aws_mock, make_device):
    device = make_device("SN-1")
    issued = vend(api, "SN-1", device.token).json()

    call_command("revoke", "SN-1", "--reason", "stolen")

    in_aws = aws_mock.iot.describe_certificate(certificateId=issued["certificate_id"])["certificateDescription"]
    assert in_aws["status"] == "REVOKED"
    assert aws_mock.iot.list_thing_principals(thingName="SN-1")["principals"] == []
    assert aws_mock.policies_of(issued["certificate_arn"]) == []
    certificate = Certificate.objects.get(certificate_id=issued["certificate_id"])
    assert certificate.status == CertificateStatus.REVOKED
    assert certificate.revoked_reason == "stolen"
    assert certificate.revoked_by.startswith("cli:")
    assert Device.objects.get(serial="SN-1").state == DeviceState.REVOKED
    event = AuditEvent.objects.filter(kind=AuditKind.DEVICE_REVOKED).get()
    assert event.data == {"certificate_id": issued["certificate_id"], "reason": "stolen"}


def test_revoke_of_a_device_without_certificate_is_an_error(make_device):
    make_device("SN-1")
    with pytest.raises(CommandError, match="only an active device can be revoked"):
        call_command("revoke", "SN-1", "--reason", "x")


def test_reset_revokes_and_issues_a_token_that_provisions_again(tmp_path, api, aws_mock, make_device):
    device = make_device("SN-1")
    first = vend(api, "SN-1", device.token).json()
    out = tmp_path / "reset.csv"

    call_command("reset", "SN-1", "--out", str(out))

    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    token = read_tokens(out)[0]["token"]
    assert Device.objects.get(serial="SN-1").state == DeviceState.TOKEN_ISSUED
    status = aws_mock.iot.describe_certificate(certificateId=first["certificate_id"])["certificateDescription"]
    assert status["status"] == "REVOKED"
    second = vend(api, "SN-1", token)
    assert second.status_code == 201
    assert [c["certificateId"] for c in aws_mock.active_certificates()] == [second.json()["certificate_id"]]
    assert Certificate.objects.filter(device__serial="SN-1").count() == 2


def test_reset_of_a_device_that_never_had_a_certificate_is_refused(tmp_path, make_device):
    make_device("SN-1")
    with pytest.raises(CommandError, match="reset applies to active or revoked devices"):
        call_command("reset", "SN-1", "--out", str(tmp_path / "t.csv"))
    assert not (tmp_path / "t.csv").exists()


def test_bootstrap_aws_is_idempotent_and_the_policy_is_least_privilege(aws_mock, capsys):
    call_command("bootstrap_aws")

    assert capsys.readouterr().out.splitlines() == [
        "IoT policy cvm-device-policy: already present",
        "DynamoDB table cvm-device-association: already present",
    ]
    import json

    document = json.loads(aws_mock.iot.get_policy(policyName="cvm-device-policy")["policyDocument"])
    resources = [statement["Resource"] for statement in document["Statement"]]
    assert all("${iot:Connection.Thing.ThingName}" in resource for resource in resources)
    connect = next(s for s in document["Statement"] if s["Action"] == "iot:Connect")
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    for statement in document["Statement"]:
        assert "*" not in statement["Action"]
        if statement["Action"] != "iot:Connect":
            assert "/things/${iot:Connection.Thing.ThingName}/" in statement["Resource"]
    table = aws_mock.dynamodb.describe_table(TableName="cvm-device-association")["Table"]
    assert table["KeySchema"] == [{"AttributeName": "productId", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_commands_exit_non_zero_with_one_line_on_bad_input(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True)

    result = subprocess.run(
        [*manage, "revoke", "NOPE", "--reason", "x"], env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: unknown serial NOPE"
