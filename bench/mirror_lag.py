"""The lag from commit to DynamoDB while devices vend (`mirror` benchmark), in a process of its own.

Vends DEVICES devices (AWS IoT answering at once, in the process) while a `sync_dynamodb` worker, started
by `bench.run`, drains; lag = done_at - created_at of each outbox row. Prints one JSON line.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.mirror_lag [DEVICES]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import django


def measure(devices: int) -> dict[str, Any]:
    from django.test import Client

    from bench.instant_aws import answer_at_once
    from provisioning import services
    from provisioning.models import DynamoOutbox

    answer_at_once()
    serials = [f"LAG-{i:04d}" for i in range(devices)]
    services.devices_import(rows=[services.ImportRow(line=2, serial=s, product="b") for s in serials], actor="b")
    tokens = {t.serial: t.token for t in services.tokens_issue(serials=serials, actor="b")}
    client = Client()
    for serial in serials:
        body = json.dumps({"serial": serial, "token": tokens[serial]})
        assert client.post("/api/v1/certificates", body, content_type="application/json").status_code == 201
        time.sleep(0.02)  # a steady trickle of vends, as in the field, not one burst
    deadline = time.time() + 30
    while DynamoOutbox.objects.filter(done_at__isnull=True).exists() and time.time() < deadline:
        time.sleep(0.1)
    rows = DynamoOutbox.objects.filter(serial__startswith="LAG-", done_at__isnull=False)
    lags = [(r.done_at - r.created_at).total_seconds() for r in rows]
    return {"n": len(lags), "median": statistics.median(lags), "max": max(lags)}


if __name__ == "__main__":
    django.setup()
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100)))
