"""The benchmarks' own yardsticks still fit the schema they measure (the benchmarks themselves are timed, and
run by `make bench`, not here)."""

from __future__ import annotations

import pytest
from django.db import transaction

from bench.pg_throughput import unchained_append_many
from provisioning.audit import NewEvent, audit_head
from provisioning.models import AuditEvent


@pytest.mark.django_db
def test_the_unchained_baseline_writes_the_same_rows_without_touching_the_chain():
    head = audit_head()
    events = [
        NewEvent(kind="vend_claimed", actor="device", serial=f"SN-{i}", data={"key_origin": "aws"}) for i in range(3)
    ]

    with transaction.atomic():
        unchained_append_many(events)

    rows = AuditEvent.objects.filter(serial__startswith="SN-").order_by("seq")
    assert [(e.serial, e.kind, e.data) for e in rows] == [(e.serial, e.kind, e.data) for e in events]
    assert len({e.hash for e in rows}) == 3
    assert (audit_head().seq, audit_head().head) == (head.seq, head.head)
