"""The DynamoDB association table follows the database: right items, never backwards, nothing lost."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from provisioning import aws, mirror
from provisioning.crypto import token_digest
from provisioning.models import AuditEvent, AuditKind, Device, DynamoOutbox
from provisioning.services import device_reset, device_revoke

from .conftest import run_together, vend

pytestmark = pytest.mark.django_db(transaction=True)
TABLE = "cvm-device-association"


def drain() -> None:
    call_command("sync_dynamodb", "--once", stdout=open("/dev/null", "w"))  # noqa: SIM115


def test_each_device_change_produces_the_right_item(api, aws_mock, make_device):
    make_device("SN-1", with_token=False)
    drain()
    item = aws_mock.table(TABLE)["SN-1"]
    assert item == {
        "productId": "SN-1",
        "applyState": 0,
        "status": "registered",
        "thingName": "SN-1",
        "product": "sensor",
        "version": 1,
    }

    from provisioning.services import tokens_issue

    token = tokens_issue(serials=["SN-1"], actor="test")[0].token
    drain()
    item = aws_mock.table(TABLE)["SN-1"]
    assert (item["status"], item["applyState"], item["accessTokenHash"]) == ("token_issued", 0, token_digest(token))

    issued = vend(api, "SN-1", token).json()
    drain()
    item = aws_mock.table(TABLE)["SN-1"]
    assert (item["status"], item["applyState"], item["certID"]) == ("active", -1, issued["certificate_id"])
    assert item["timestamp"].endswith("Z")
    assert item["version"] == Device.objects.get(serial="SN-1").version

    device_revoke(serial="SN-1", reason="test", actor="test")
    drain()
    assert (aws_mock.table(TABLE)["SN-1"]["status"], aws_mock.table(TABLE)["SN-1"]["applyState"]) == ("revoked", -2)

    new_token = device_reset(serial="SN-1", actor="test").token
    drain()
    item = aws_mock.table(TABLE)["SN-1"]
    assert (item["status"], item["applyState"], item["accessTokenHash"]) == ("token_issued", 0, token_digest(new_token))
    assert "certID" not in item
    for value in item.values():
        assert token not in str(value)
        assert new_token not in str(value)


def test_versions_never_go_backwards_when_drained_out_of_order_or_twice(aws_mock, make_device):
    make_device("SN-ORDER")
    rows = list(DynamoOutbox.objects.filter(serial="SN-ORDER").order_by("version"))
    assert [row.version for row in rows] == [1, 2]

    # Deliver the newest first, then the older one, then the newest again.
    assert aws.association_put(table_name=TABLE, item=rows[1].item) is True
    assert aws.association_put(table_name=TABLE, item=rows[0].item) is False
    assert aws.association_put(table_name=TABLE, item=rows[1].item) is False
    assert aws_mock.table(TABLE)["SN-ORDER"]["version"] == 2
    assert aws_mock.table(TABLE)["SN-ORDER"]["status"] == "token_issued"

    drain()
    drain()
    assert aws_mock.table(TABLE)["SN-ORDER"]["version"] == 2
    assert DynamoOutbox.objects.filter(done_at__isnull=True).count() == 0


def test_outage_loses_nothing_and_one_drain_catches_up(api, aws_mock, aws_fault, make_device):
    # Every DynamoDB call fails as if the service were unreachable.
    outage = aws_fault(None, service="dynamodb", code="ServiceUnavailable")
    try:
        devices = [make_device(f"SN-OUT{i}") for i in range(3)]
        assert vend(api, devices[0].serial, devices[0].token).status_code == 201, "issuance needs no DynamoDB"
        report = mirror.outbox_drain()
        assert report.failed > 0
        assert report.written == 0
        with pytest.raises(CommandError, match="could not be written"):
            drain()
        pending = DynamoOutbox.objects.filter(done_at__isnull=True)
        assert pending.exists()
        assert all(row.attempts >= 1 and row.last_error for row in pending)
    finally:
        outage.heal()

    drain()

    held = aws_mock.table(TABLE)
    for device in Device.objects.select_related("product", "current_certificate"):
        from provisioning.mirror import device_association_item

        expected = {k: v for k, v in device_association_item(device).items() if v is not None}
        assert held[device.serial] == expected
    call_command("reconcile", stdout=open("/dev/null", "w"))  # noqa: SIM115 - exits 0: no differences


def test_worker_delivers_a_change_within_about_a_second(aws_mock, make_device):
    stop = threading.Event()
    worker = threading.Thread(target=mirror.outbox_follow, kwargs={"stop": stop})
    worker.start()
    try:
        make_device("SN-FAST", with_token=False)
        committed = time.monotonic()
        while "SN-FAST" not in aws_mock.table(TABLE):
            assert time.monotonic() - committed < 3, "the change did not reach DynamoDB"
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=5)
    assert not worker.is_alive(), "the worker stops when asked"


def test_delivered_rows_are_pruned_and_failing_ones_kept(aws_mock, make_device):
    from datetime import timedelta

    from django.utils import timezone

    make_device("SN-P1", with_token=False)
    drain()
    DynamoOutbox.objects.update(done_at=timezone.now() - timedelta(days=8))
    DynamoOutbox.objects.create(serial="SN-P1", version=99, item={}, attempts=5, last_error="ValidationException")

    assert mirror.outbox_prune(older_than=timedelta(days=7)) == 1
    assert list(DynamoOutbox.objects.values_list("last_error", flat=True)) == ["ValidationException"]


def test_two_workers_write_each_change_once_and_in_order(aws_mock, make_device, monkeypatch):
    serials = [f"SN-W{i}" for i in range(6)]
    from provisioning.services import tokens_issue

    for serial in serials:
        make_device(serial)
        for _ in range(3):  # more versions per serial, so the workers' batches interleave
            tokens_issue(serials=[serial], actor="test")
    accepted: dict[str, list[int]] = defaultdict(list)
    attempted: list[tuple[str, int]] = []
    lock = threading.Lock()
    real_put = aws.association_put

    def recording_put(*, table_name, item):
        # Held across the write, so the order recorded is the order DynamoDB saw; the workers still
        # lease, coalesce and mark rows concurrently.
        with lock:
            ok = real_put(table_name=table_name, item=item)
            attempted.append((item["productId"], item["version"]))
            if ok:
                accepted[item["productId"]].append(item["version"])
        return ok

    monkeypatch.setattr(aws, "association_put", recording_put)

    def worker(_: int) -> None:
        while mirror.outbox_drain(batch_size=3).handled:
            pass

    run_together(2, worker)

    assert DynamoOutbox.objects.filter(done_at__isnull=True).count() == 0
    for serial in serials:
        versions = accepted[serial]
        assert versions == sorted(set(versions)), f"{serial}: accepted out of order or twice: {versions}"
        assert aws_mock.table(TABLE)[serial]["version"] == Device.objects.get(serial=serial).version
    assert len(attempted) == len(set(attempted)), "no change was written by both workers"


# --- reconcile ------------------------------------------------------------------------------------


@pytest.fixture
def fleet(api, aws_mock, make_device):
    """Three active devices, one revoked, one registered; everything mirrored."""
    for serial in ("SN-A1", "SN-A2", "SN-A3", "SN-RV"):
        made = make_device(serial)
        assert vend(api, serial, made.token).status_code == 201
    device_revoke(serial="SN-RV", reason="test", actor="test")
    make_device("SN-REG", with_token=False)
    drain()
    return aws_mock


def reconcile_lines(capsys, *args) -> tuple[int, list[str]]:
    try:
        call_command("reconcile", *args)
        code = 0
    except CommandError:
        code = 1
    return code, capsys.readouterr().out.splitlines()


def test_reconcile_reports_nothing_for_a_consistent_fleet(fleet, capsys):
    assert reconcile_lines(capsys) == (0, ["no differences: database, DynamoDB and AWS IoT agree"])


def test_reconcile_finds_and_repairs_every_kind_of_drift(fleet, capsys):
    iot = fleet.iot
    a2 = Device.objects.get(serial="SN-A2").current_certificate
    a3 = Device.objects.get(serial="SN-A3").current_certificate
    revoked = Device.objects.get(serial="SN-RV").current_certificate
    # DynamoDB: a missing item, a stale one, one for a serial nobody knows.
    aws.association_delete(table_name=TABLE, serial="SN-REG")
    aws.association_replace(table_name=TABLE, item={**fleet.table(TABLE)["SN-A1"], "status": "revoked"})
    aws.association_replace(table_name=TABLE, item={"productId": "SN-GHOST", "version": 1})
    # AWS IoT: an ACTIVE orphan on a thing, the database's active certificate deactivated and detached,
    # a revoked certificate usable again, and one active certificate revoked behind the portal's back.
    orphan = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="SN-A1", principal=orphan["certificateArn"])
    iot.update_certificate(certificateId=a2.certificate_id, newStatus="INACTIVE")
    iot.detach_thing_principal(thingName="SN-A2", principal=a2.arn)
    iot.detach_policy(policyName="cvm-device-policy", target=a2.arn)
    iot.update_certificate(certificateId=revoked.certificate_id, newStatus="ACTIVE")
    iot.attach_thing_principal(thingName="SN-RV", principal=revoked.arn)
    iot.update_certificate(certificateId=a3.certificate_id, newStatus="REVOKED")

    code, lines = reconcile_lines(capsys)

    assert code == 1
    found = {(line.split(": ")[0], line.split(": ")[1]) for line in lines}
    assert found == {
        ("SN-REG", "table_missing"),
        ("SN-A1", "table_stale"),
        ("SN-GHOST", "table_unknown"),
        ("SN-A1", "orphan_certificate"),
        ("SN-A2", "active_certificate_inactive"),
        ("SN-A2", "certificate_detached"),
        ("SN-A2", "policy_detached"),
        ("SN-RV", "revoked_certificate_usable"),
        ("SN-A3", "active_certificate_lost"),
    }

    code, lines = reconcile_lines(capsys, "--fix")

    assert code == 0
    assert lines[-1] == "repaired 9 of 9 difference(s)"
    assert AuditEvent.objects.filter(kind=AuditKind.RECONCILE_REPAIR).count() == 9
    orphan_now = iot.describe_certificate(certificateId=orphan["certificateId"])["certificateDescription"]
    assert orphan_now["status"] == "REVOKED", "an orphan is revoked, never adopted"
    assert orphan["certificateArn"] not in iot.list_thing_principals(thingName="SN-A1")["principals"]
    assert fleet.thing_certificates("SN-A2")[0]["status"] == "ACTIVE"
    assert fleet.policies_of(a2.arn) == ["cvm-device-policy"]
    rv = iot.describe_certificate(certificateId=revoked.certificate_id)["certificateDescription"]
    assert rv["status"] == "REVOKED"
    assert Device.objects.get(serial="SN-A3").state == "revoked"
    drain()
    assert reconcile_lines(capsys) == (0, ["no differences: database, DynamoDB and AWS IoT agree"])


def test_reconcile_rolls_back_a_stale_claim_and_removes_its_leftovers(fleet, make_device, capsys):
    from datetime import timedelta

    from django.utils import timezone

    make_device("SN-CRASH")
    fleet.iot.create_thing(thingName="SN-CRASH")
    leftover = fleet.iot.create_keys_and_certificate(setAsActive=False)
    fleet.iot.attach_thing_principal(thingName="SN-CRASH", principal=leftover["certificateArn"])
    Device.objects.filter(serial="SN-CRASH").update(state="issuing", claimed_at=timezone.now() - timedelta(hours=1))
    drain()

    code, lines = reconcile_lines(capsys, "--fix")
    assert code == 0
    assert any("SN-CRASH: stale_claim" in line for line in lines)
    assert Device.objects.get(serial="SN-CRASH").state == "token_issued"
    assert fleet.iot.list_thing_principals(thingName="SN-CRASH")["principals"] == []
