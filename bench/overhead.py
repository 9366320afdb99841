"""The `overhead` benchmark's measurement, in a process of its own (`bench.run` starts it).

Vends through the whole stack with AWS answering at once, interleaved with a bare DRF endpoint that parses
the same body. Prints one JSON line: the seconds of each vend and each bare request.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.overhead COUNT
"""

from __future__ import annotations

import json
import sys
import time

import django

WARM_UP = 20  # the first requests warm caches and imports


def measure(count: int) -> dict[str, list[float]]:
    from django.test import Client, override_settings

    from bench.instant_aws import answer_at_once
    from provisioning import services

    answer_at_once()
    serials = [f"OVH-{i:05d}" for i in range(count + WARM_UP)]
    services.devices_import(rows=[services.ImportRow(line=2, serial=s, product="b") for s in serials], actor="b")
    tokens = {t.serial: t.token for t in services.tokens_issue(serials=serials, actor="b")}
    client = Client()
    vend: list[float] = []
    bare: list[float] = []
    with override_settings(ROOT_URLCONF="bench.urls"):
        for i, serial in enumerate(serials):
            body = json.dumps({"serial": serial, "token": tokens[serial]})
            t0 = time.perf_counter()
            vended = client.post("/api/v1/certificates", body, content_type="application/json")
            t1 = time.perf_counter()
            answered = client.post("/bench/bare", body, content_type="application/json")
            t2 = time.perf_counter()
            assert vended.status_code == 201, vended.status_code
            assert answered.status_code == 201, answered.status_code
            if i >= WARM_UP:
                vend.append(t1 - t0)
                bare.append(t2 - t1)
    return {"vend": vend, "bare": bare}


if __name__ == "__main__":
    django.setup()
    print(json.dumps(measure(int(sys.argv[1]))))
