"""The `flood` benchmark's measurement, in a process of its own (`bench.run` starts it).

An address goes over its failed-token limit; then it sends FLOOD more requests while legitimate devices
vend from another address. Prints one JSON line: the audit rows the flood added, how long the flood took,
and the seconds of each legitimate vend before and during it.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.flood FLOOD VENDS
"""

from __future__ import annotations

import json
import sys
import threading
import time

import django

ATTACKER = "198.51.100.66"
DEVICE = "192.0.2.10"


def measure(flood: int, vends: int) -> dict[str, object]:
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from bench.instant_aws import answer_at_once
    from provisioning import services
    from provisioning.models import AuditEvent

    answer_at_once()
    serials = [f"FLD-{i:05d}" for i in range(2 * vends)]
    services.devices_import(rows=[services.ImportRow(line=2, serial=s, product="b") for s in serials], actor="b")
    tokens = {t.serial: t.token for t in services.tokens_issue(serials=serials, actor="b")}

    def wrong(client: Client) -> int:
        body = json.dumps({"serial": "FLD-NOBODY", "token": "wrong-token-" + "x" * 20})
        return client.post(
            "/api/v1/certificates", body, content_type="application/json", REMOTE_ADDR=ATTACKER
        ).status_code

    attacker = Client()
    while wrong(attacker) != 429:  # up to CVM_FAILED_TOKENS_PER_ADDRESS refusals, then the lockout
        pass

    def vend_all(batch: list[str]) -> list[float]:
        client, seconds = Client(), []
        for serial in batch:
            body = json.dumps({"serial": serial, "token": tokens[serial]})
            started = time.perf_counter()
            response = client.post("/api/v1/certificates", body, content_type="application/json", REMOTE_ADDR=DEVICE)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 201, response.status_code
        return seconds

    quiet = vend_all(serials[:vends])
    rows_before = AuditEvent.objects.filter(client_address=ATTACKER).count()
    statuses: dict[int, int] = {}

    def flood_requests() -> None:
        client = Client()
        try:
            for _ in range(flood):
                status = wrong(client)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    flooding = threading.Thread(target=flood_requests)
    started = time.perf_counter()
    flooding.start()
    during = vend_all(serials[vends:])
    flooding.join()
    flood_seconds = time.perf_counter() - started
    return {
        "flood": flood,
        "statuses": statuses,
        "rows_added": AuditEvent.objects.filter(client_address=ATTACKER).count() - rows_before,
        "flood_seconds": flood_seconds,
        "limit": settings.CVM_FAILED_TOKENS_PER_ADDRESS,
        "quiet": quiet,
        "during": during,
    }


if __name__ == "__main__":
    django.setup()
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
