"""The vend's hot path: its statements, and what each of its transactions writes (SPEC §3, §6, §10)."""

from __future__ import annotations

import re

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from provisioning.models import AuditEvent, AuditKind, Device, DeviceState, DynamoOutbox, WebhookDelivery
from provisioning.services.vending import VendRefused, certificate_vend
from provisioning.services.webhooks import webhook_add, webhook_set_enabled

pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The first word of each statement, transaction control left out (it differs between databases).

    Django logs an `executemany` as "N times: INSERT …"; it is one statement here."""
    words = [re.sub(r"^\d+ times: ", "", query["sql"]).split(None, 1)[0].upper() for query in queries.captured_queries]
    return [word for word in words if word not in TRANSACTION_CONTROL]


def test_a_vend_takes_ten_statements_and_no_read_after_a_write(aws_mock, make_device):
    device = make_device()

    with CaptureQueriesContext(connection) as queries:
        certificate_vend(serial=device.serial, token=device.token, csr=None, client_address="192.0.2.1")

    # The device and the failure window; the claim (UPDATE … RETURNING), its audit event and outbox row;
    # the certificates AWS may already hold; the certificate, the state change, its audit event and
    # outbox row. A statement more is a cost on every vend of the fleet: add one only knowingly.
    assert statements(queries) == [
        "SELECT",
        "SELECT",
        "UPDATE",
        "INSERT",
        "INSERT",
        "SELECT",
        "INSERT",
        "UPDATE",
        "INSERT",
        "INSERT",
    ]
    assert Device.objects.get(serial=device.serial).state == DeviceState.ACTIVE


def test_refusals_for_an_unknown_serial_and_a_wrong_token_take_the_same_statements(db, make_device):
    device = make_device()

    with CaptureQueriesContext(connection) as unknown, pytest.raises(VendRefused):
        certificate_vend(serial="SN-NOT-THERE", token="x" * 32, csr=None, client_address="192.0.2.2")
    with CaptureQueriesContext(connection) as wrong, pytest.raises(VendRefused):
        certificate_vend(serial=device.serial, token="x" * 32, csr=None, client_address="192.0.2.3")

    assert statements(unknown) == statements(wrong) == ["SELECT", "SELECT", "INSERT"]
    reasons = list(AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED).order_by("id").values_list("data", flat=True))
    assert reasons == [{"reason": "unknown_serial"}, {"reason": "token_wrong"}]


def test_each_vend_transaction_writes_its_audit_event_and_outbox_row_with_the_device_as_it_now_is(
    aws_mock, make_device
):
    device = make_device()

    certificate_vend(serial=device.serial, token=device.token, csr=None, client_address="192.0.2.4")

    stored = Device.objects.select_related("current_certificate").get(serial=device.serial)
    outbox = list(DynamoOutbox.objects.filter(serial=device.serial).order_by("id"))
    # Registration, the token, the claim, the issuance: one version each, in order.
    assert [row.version for row in outbox] == [1, 2, 3, 4] == [*range(1, stored.version + 1)]
    claimed, issued = outbox[-2].item, outbox[-1].item
    assert (claimed["status"], claimed["certID"], claimed["product"]) == ("issuing", None, "sensor")
    assert (issued["status"], issued["certID"]) == ("active", stored.current_certificate.certificate_id)
    assert issued["timestamp"] == stored.last_request_at.isoformat().replace("+00:00", "Z")
    kinds = list(AuditEvent.objects.filter(serial=device.serial).order_by("id").values_list("kind", flat=True))
    assert kinds[-2:] == [AuditKind.VEND_CLAIMED, AuditKind.CERTIFICATE_ISSUED]


def test_an_endpoint_added_or_disabled_takes_effect_for_the_very_next_vend(aws_mock, make_device):
    first, second, third = make_device(), make_device(), make_device()
    certificate_vend(serial=first.serial, token=first.token, csr=None, client_address=None)
    endpoint = webhook_add(url="http://127.0.0.1:9/hooks", event_types=[], actor="test").endpoint

    certificate_vend(serial=second.serial, token=second.token, csr=None, client_address=None)
    webhook_set_enabled(endpoint_id=endpoint.pk, enabled=False, actor="test")
    certificate_vend(serial=third.serial, token=third.token, csr=None, client_address=None)

    delivered = list(WebhookDelivery.objects.values_list("serial", "event_type"))
    assert delivered == [(second.serial, "certificate.issued")]


def test_the_failure_window_reads_only_the_callers_own_refusals(db):
    """Asked on every device call: it must cost the same however many other callers were refused this
    hour. A query that walks every refusal of the window makes a spray from many addresses dearer with
    each refusal it adds."""
    import datetime

    from django.utils import timezone

    from provisioning.audit import audit_append
    from provisioning.selectors import _refusals_sql, refusals_in_window

    now = timezone.now()
    with transaction.atomic():
        for i in range(30):  # other callers' refusals, and the caller's own
            audit_append(kind=AuditKind.VEND_REFUSED, actor="device", serial=f"SN-OTHER-{i}",
                         client_address=f"198.51.100.{i}", data={"reason": "token_wrong"})  # fmt: skip
        for address in ("192.0.2.7", "192.0.2.8"):
            audit_append(kind=AuditKind.VEND_REFUSED, actor="device", serial="SN-MINE", client_address=address,
                         data={"reason": "token_wrong"})  # fmt: skip
        audit_append(kind=AuditKind.ROTATE_REFUSED, actor="device", serial="SN-MINE", client_address="192.0.2.7",
                     data={"reason": "proof_wrong"})  # fmt: skip

    by_serial, by_address = refusals_in_window(
        since=now - datetime.timedelta(hours=1), serial="SN-MINE", client_address="192.0.2.7"
    )
    nobody = refusals_in_window(since=now - datetime.timedelta(hours=1), serial="SN-NONE", client_address=None)

    assert (by_serial.count, by_address.count) == (3, 2)
    assert by_serial.oldest is not None
    assert by_serial.oldest >= now - datetime.timedelta(seconds=60)
    assert (nobody[0].count, nobody[1].count, nobody[1].oldest) == (0, 0, None)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + _refusals_sql("sqlite").replace("%s", "?"), ["s", "a", "b", now,
                           "192.0.2.7", "a", "b", now])  # fmt: skip
            plan = " | ".join(row[-1] for row in cursor.fetchall())
        assert "audit_serial_kind_time (serial=?" in plan, plan
        assert "audit_address_kind_time (client_address=?" in plan, plan
        assert "audit_kind_time" not in plan, plan
        assert "SCAN provisioning_auditevent" not in plan, plan
