"""The audit sequencer (`audit_chain` benchmark), in a process of its own against DATABASE_URL.

1. Chaining rate: EVENTS events written unchained in one transaction (an import's worth), then chained
   by `audit_chain_pending()`; events chained per second.
2. Lag while writing: WRITERS threads each append one event per transaction (as a vend does) for SECONDS,
   while the worker's sequencer (`audit_follow`) runs beside them; every 50 ms the age of the oldest
   unchained event is sampled. At the end everything must be chained and `audit_verify()` clean.

Prints one JSON line.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.audit_chain EVENTS WRITERS SECONDS
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from typing import Any

import django


def chaining_rate(events: int) -> dict[str, float]:
    from django.db import transaction

    from provisioning.audit import NewEvent, audit_append_many, audit_chain_pending

    batch = [NewEvent(kind="token_issued", actor="bench", serial=f"AC-{i:06d}", data={"n": i}) for i in range(events)]
    t0 = time.perf_counter()
    with transaction.atomic():
        audit_append_many(batch)
    t1 = time.perf_counter()
    chained = audit_chain_pending()
    t2 = time.perf_counter()
    assert chained == events, chained
    return {"append_s": t1 - t0, "chain_s": t2 - t1, "chained_per_s": events / (t2 - t1)}


def lag_while_writing(writers: int, seconds: float) -> dict[str, Any]:
    from django.db import connection, transaction
    from django.utils import timezone

    from provisioning.audit import audit_append, audit_follow, audit_unchained, audit_verify

    stop_writers, stop_sequencer = threading.Event(), threading.Event()
    appended = [0] * writers
    lags: list[float] = []

    def writer(index: int) -> None:
        try:
            while not stop_writers.is_set():
                with transaction.atomic():
                    audit_append(kind="vend_claimed", actor="device", serial=f"W{index}-{appended[index]}")
                appended[index] += 1
        finally:
            connection.close()

    def sampler() -> None:
        try:
            while not stop_writers.is_set():
                _, oldest = audit_unchained()
                lags.append((timezone.now() - oldest).total_seconds() if oldest else 0.0)
                time.sleep(0.05)
        finally:
            connection.close()

    def sequencer() -> None:
        try:
            audit_follow(stop=stop_sequencer)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    helpers = [threading.Thread(target=sampler), threading.Thread(target=sequencer)]
    for thread in [*helpers, *threads]:
        thread.start()
    time.sleep(seconds)
    stop_writers.set()
    for thread in threads:
        thread.join()
    helpers[0].join()
    deadline = time.monotonic() + 30
    while audit_unchained()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_sequencer.set()
    helpers[1].join()
    ordered = sorted(lags)
    return {
        "appended_per_s": sum(appended) / seconds,
        "lag_median_s": statistics.median(ordered),
        "lag_p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "lag_max_s": ordered[-1],
        "left_unchained": audit_unchained()[0],
        "verify_problems": len(audit_verify()),
    }


if __name__ == "__main__":
    django.setup()
    events, writers, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    load_before = os.getloadavg()
    result = {"rate": chaining_rate(events), "lag": lag_while_writing(writers, seconds)}
    result["load"] = [load_before, os.getloadavg()]
    print(json.dumps(result))
