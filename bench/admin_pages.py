"""The `admin` benchmark's measurement, in a process of its own (`bench.run` starts it).

Tops the database the `bulk` benchmark left (its 100,000 devices) up to EVENTS audit events and a
certificate per device, then times the admin changelists as a superuser. Prints one JSON line.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.admin_pages [EVENTS]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import statistics
import sys
import time
from typing import Any

import django

KINDS = ["vend_refused", "certificate_issued", "token_issued", "vend_claimed", "admin_login"]
DEVICES = 100_000


def fill(events: int, now: datetime.datetime) -> None:
    from django.db import connection, transaction

    from provisioning.bulk import db_datetime, insert_rows
    from provisioning.models import AuditChainHead, AuditEvent, Certificate, Device

    have = AuditEvent.objects.count()
    with transaction.atomic():
        insert_rows(
            AuditEvent,
            ["seq", "created_at", "kind", "actor", "serial", "client_address", "data", "prev_hash", "hash", "mac"],
            (
                (have + i + 1, db_datetime(now - datetime.timedelta(seconds=events - i)), KINDS[i % 5], "device",
                 f"BULK-{i % DEVICES:06d}", "198.51.100.7", "{}", "0" * 64, "0" * 64, "")
                for i in range(events - have)
            ),
        )  # fmt: skip
        ids = list(Device.objects.order_by("id").values_list("id", "serial")[:DEVICES])
        insert_rows(
            Certificate,
            ["device_id", "certificate_id", "arn", "fingerprint_sha256", "key_origin", "status", "thing_name",
             "issued_at", "revoked_by", "revoked_reason", "public_key_pem", "certificate_pem",
             "policy_name"],
            (
                (pk, hashlib.sha256(serial.encode()).hexdigest(), "arn:aws:iot:us-east-1:1:cert/x",
                 hashlib.sha256(b"f" + serial.encode()).hexdigest(), "csr", "active", serial, db_datetime(now), "", "",
                 "", "", "")
                for pk, serial in ids
            ),
        )  # fmt: skip
        # Synthetic rows do not chain; the head only has to know the last number so appends go on after it.
        AuditChainHead.objects.filter(pk=1).update(last_seq=events)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure(events: int) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from provisioning.models import AuditEvent, Device

    now = datetime.datetime.now(datetime.UTC)
    fill(events, now)
    User.objects.create_superuser("bench", "", "bench-password-123")
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    pages = {
        "devices": "/admin/provisioning/device/",
        "devices by state": "/admin/provisioning/device/?state__exact=token_issued",
        "device search": "/admin/provisioning/device/?q=BULK-054321",
        "certificates": "/admin/provisioning/certificate/",
        "audit events": "/admin/provisioning/auditevent/",
        "audit events by kind": "/admin/provisioning/auditevent/?kind__exact=vend_refused",
        "audit events by serial": "/admin/provisioning/auditevent/?serial=BULK-000042",
        "audit events, last 7 days": "/admin/provisioning/auditevent/?created_at__from="
        + (now - datetime.timedelta(days=7)).date().isoformat(),
    }
    results = {}
    for name, url in pages.items():
        client.get(url)
        times = []
        for _ in range(5):
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - t0)
            assert response.status_code == 200, (url, response.status_code)
        results[name] = {"ms": statistics.median(times) * 1000, "queries": len(queries)}
    return {
        "pages": results,
        "events": AuditEvent.objects.order_by("-seq").values_list("seq", flat=True)[0],
        "devices": Device.objects.order_by("-id").values_list("id", flat=True)[0],
    }


if __name__ == "__main__":
    django.setup()
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
