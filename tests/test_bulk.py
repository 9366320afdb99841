"""Bulk runs: every row goes in, in order, whatever the statements' size (provisioning/bulk.py), and tokens
made in bulk are tokens like any other."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from provisioning import bulk
from provisioning.bulk import db_datetime, db_json, insert_rows
from provisioning.crypto import TOKEN_BYTES, token_digest, token_digests, token_generate, token_generate_many
from provisioning.mirror import AssociationItemsJson, association_item
from provisioning.models import Certificate, Device, DeviceState, DynamoOutbox, Product

from .conftest import vend

pytestmark = pytest.mark.django_db(transaction=True)

COLUMNS = ["serial", "version", "item", "created_at", "attempts", "last_error"]


def outbox_rows(count: int) -> list[tuple]:
    stamp = db_datetime(timezone.now())
    return [(f"SN-{i:05d}", i + 1, db_json({"productId": f"SN-{i:05d}"}), stamp, 0, "") for i in range(count)]


def test_rows_spread_over_several_statements_all_go_in_in_order(monkeypatch):
    # Ten rows of six columns per statement here, so 25 rows take two full statements and a shorter one.
    monkeypatch.setattr(bulk, "SQLITE_PARAMS_PER_INSERT", 60)

    with transaction.atomic():
        written = insert_rows(DynamoOutbox, COLUMNS, iter(outbox_rows(25)))

    assert written == 25
    stored = list(DynamoOutbox.objects.order_by("id").values_list("serial", "version", "item"))
    assert stored == [(f"SN-{i:05d}", i + 1, {"productId": f"SN-{i:05d}"}) for i in range(25)]


def test_a_bulk_write_of_thousands_of_rows_goes_in_whole():
    with transaction.atomic():
        written = insert_rows(DynamoOutbox, COLUMNS, (row for row in outbox_rows(12_345)))

    assert written == DynamoOutbox.objects.count() == 12_345
    assert DynamoOutbox.objects.order_by("-id").values_list("serial", flat=True).first() == "SN-12344"


def test_one_row_is_one_plain_insert():
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        insert_rows(DynamoOutbox, COLUMNS, outbox_rows(1))

    inserts = [query["sql"] for query in queries.captured_queries if "INSERT" in query["sql"]]
    assert len(inserts) == 1
    assert inserts[0].startswith('INSERT INTO "provisioning_dynamooutbox"')
    assert "), (" not in inserts[0], "one row, one VALUES group"


def test_a_bulk_write_that_breaks_a_constraint_raises_djangos_error_and_writes_nothing():
    stamp = db_datetime(timezone.now())
    names = [f"product-{i}" for i in range(6000)] + ["product-17"]
    rows = [(name, "", stamp, "", "[]", "", stamp) for name in names]

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows(Product, ["name", "description", "created_at", "iot_policy", "thing_groups", "thing_type",
                              "updated_at"], rows)  # fmt: skip

    assert not Product.objects.exists()


def test_tokens_made_in_bulk_are_as_random_and_as_long_as_single_ones():
    tokens = token_generate_many(10_000)

    assert len(tokens) == len(set(tokens)) == 10_000
    assert {len(token) for token in tokens} == {len(token_generate())} == {32}
    assert all(len(base64.urlsafe_b64decode(token)) == TOKEN_BYTES >= 16 for token in tokens), ">= 128 random bits"
    assert token_digests(tokens[:50]) == [token_digest(token) for token in tokens[:50]]


@pytest.mark.parametrize("field", ["current_certificate", "pending_certificate"])
def test_a_certificate_belongs_to_one_device_while_any_number_have_none(api, aws_mock, make_device, field):
    first, second = make_device("SN-1"), make_device("SN-2")
    make_device("SN-3")
    assert vend(api, first.serial, first.token).status_code == 201
    certificate = Certificate.objects.get(device__serial="SN-1")
    Device.objects.filter(serial="SN-1").update(**{field: certificate})

    with pytest.raises(IntegrityError), transaction.atomic():
        Device.objects.filter(serial=second.serial).update(**{field: certificate})

    without = Device.objects.filter(**{f"{field}__isnull": True}).values_list("serial", flat=True)
    assert sorted(without) == ["SN-2", "SN-3"]


def test_a_runs_items_are_encoded_exactly_as_each_item_alone():
    moments = [None, timezone.now(), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)]
    cases = [
        {
            "serial": serial, "state": state, "version": version, "product": product, "thing_name": thing,
            "token_digest": digest, "last_request_at": moment, "certificate_id": certificate,
            "pending_certificate_id": pending,
        }
        for serial, thing in [("SN-1", "SN-1"), ("sn:2_x-Y", ""), ('S"\\ü', "thing/Ü")]
        for state in DeviceState
        for version in (1, 17, 2**40)
        for product in ("meter", "a,b@c/d:e#f=g[h]")
        for digest in ("", "ab" * 32)
        for moment in moments
        for certificate, pending in [(None, None), ("c" * 64, None), ("c" * 64, "d" * 64)]
    ]  # fmt: skip
    item_json = AssociationItemsJson()

    for case in cases:
        assert item_json(**case) == db_json(association_item(**case)), case
