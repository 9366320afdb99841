"""The `vend` benchmark's measurement, in a process of its own (`bench.run` starts it).

Calls the vend service itself (`certificate_vend`), no HTTP and no DRF, with AWS answering at once: what
the portal's own path costs, its statements and its two commits. Refusals (a wrong token, an unknown
serial) are timed beside it, interleaved, as they must cost the same. Prints one JSON line: the seconds
of each call, the statements of one vend and the load averages before and after.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.vend COUNT
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import django

WARM_UP = 30  # the first calls warm caches, imports and the statements written once per process


def measure(count: int) -> dict[str, object]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench.instant_aws import answer_at_once
    from provisioning import services
    from provisioning.services.vending import VendRefused, certificate_vend

    answer_at_once()
    serials = [f"VND-{i:05d}" for i in range(count + WARM_UP)]
    services.devices_import(rows=[services.ImportRow(line=2, serial=s, product="b") for s in serials], actor="b")
    tokens = {t.serial: t.token for t in services.tokens_issue(serials=serials, actor="b")}
    load_before = os.getloadavg()
    timings: dict[str, list[float]] = {"vend": [], "wrong_token": [], "unknown_serial": []}
    statements = 0
    for i, serial in enumerate(serials):
        # Each round from an address of its own, so the failure limits never add refusals up.
        address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        calls = [
            ("wrong_token", serial, "x" * 32),
            ("unknown_serial", f"NONE-{i:05d}", "x" * 32),
            ("vend", serial, tokens[serial]),
        ]
        # Each kind of call takes each place in the round in turn: what precedes a call (a commit, a
        # checkpoint) weighs on all three alike.
        for name, asked, token in calls[i % 3 :] + calls[: i % 3]:
            if name == "vend" and i == WARM_UP:
                with CaptureQueriesContext(connection) as queries:
                    certificate_vend(serial=asked, token=token, csr=None, client_address=address)
                statements = len(queries.captured_queries)
                continue
            t0 = time.perf_counter()
            with contextlib.suppress(VendRefused):
                certificate_vend(serial=asked, token=token, csr=None, client_address=address)
            elapsed = time.perf_counter() - t0
            if i > WARM_UP:
                timings[name].append(elapsed)
    return {**timings, "statements": statements, "load": [load_before, os.getloadavg()]}


if __name__ == "__main__":
    django.setup()
    print(json.dumps(measure(int(sys.argv[1]))))
