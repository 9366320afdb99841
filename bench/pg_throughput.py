"""The `pg_throughput` benchmark's measurement, in a process of its own (`bench.run` starts it).

Against PostgreSQL (`DATABASE_URL`, migrated): vends through the vend service with AWS answering at once,
and audit appends each in its own transaction, from 1, 4 and 16 worker processes at once. Processes, not
threads: each has its own interpreter and its own database connection, so what they contend for is the
database and the two cores, not Python's interpreter lock. They are forked from this process once Django
is loaded and warm, and all start together on a barrier; each works for `SECONDS`.

The vends are measured twice, rounds interleaved (chained, unchained, chained, unchained ...): as the
portal writes them, through `audit_append_many`, with the worker's audit sequencer (`audit_follow`) running
in a process of its own beside them, as in production; and with `audit_append_many` replaced by a plain
insert of the same rows into a table of their own shaped like the audit log (its indexes too) and no
sequencer at all, the yardstick of what the chain costs. After each chained
round, how long the sequencer took to chain what was still pending is reported too.
Only the public functions are called, so whatever `provisioning.audit` does inside is what is measured.
Prints one JSON line.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.pg_throughput [SECONDS] [ROUNDS]
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import multiprocessing
import os
import sys
import time
from typing import Any

import django

WORKERS = (1, 4, 16)
# More serials than a worker can vend in its time: about 40 ms of CPU a vend here, two cores shared.
VENDS_PER_SECOND_CEILING = 120


# The yardstick's rows go to a table of their own, shaped like the audit log with all its indexes: rows in
# the log itself with numbers of their own would be a rewritten history to the sequencer, which then
# (rightly) stops chaining until verify_audit has been looked at.
UNCHAINED_TABLE = "bench_unchained_audit"


def unchained_table() -> None:
    """Create the yardstick's table: on PostgreSQL an empty copy of the audit log's, indexes included (the
    benchmark runs there only); elsewhere, for the tests, the same columns. Call once, before forking."""
    from django.db import connection

    from provisioning.models import AuditEvent
    from provisioning.prepared import table

    like = (
        f"(LIKE {table(AuditEvent)} INCLUDING ALL)"
        if connection.vendor == "postgresql"
        else f"AS SELECT * FROM {table(AuditEvent)} WHERE 1 = 0"  # noqa: S608
    )
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {UNCHAINED_TABLE}")
        cursor.execute(f"CREATE TABLE {UNCHAINED_TABLE} {like}")


def unchained_append_many(events: list[Any]) -> list[tuple[Any, ...]]:
    """The same audit rows and the same HMAC work, inserted without the chain: no head row, no lock."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from provisioning.bulk import db_datetime, db_json
    from provisioning.models import AuditEvent
    from provisioning.prepared import column

    key = settings.CVM_AUDIT_HMAC_KEY.encode()
    created_at = timezone.now()
    rows = []
    for event in events:
        seq = os.getpid() * 10**7 + next(_unchained_numbers)  # unique without asking anyone: a range per process
        data = json.loads(json.dumps(event.data, default=str))
        body = json.dumps(
            [seq, created_at.isoformat(), event.kind, event.actor, event.serial, event.client_address, data, ""],
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        digest = hmac.new(key, body, hashlib.sha256).hexdigest()
        rows.append((seq, event.kind, event.actor, event.serial, event.client_address, data, "", digest))
    stamp = db_datetime(created_at)
    fields = ["seq", "created_at", "kind", "actor", "serial", "client_address", "data", "prev_hash", "hash", "mac"]
    names = ", ".join(column(AuditEvent, name) for name in fields)
    values = ", ".join(["%s"] * len(fields))
    with connection.cursor() as cursor:
        for r in rows:
            cursor.execute(
                f"INSERT INTO {UNCHAINED_TABLE} ({names}) VALUES ({values})",  # noqa: S608
                [r[0], stamp, r[1], r[2], r[3], r[4], db_json(r[5]), r[6], r[7], ""],
            )
    return rows


_unchained_numbers = itertools.count()


def write_unchained() -> None:
    from provisioning import audit
    from provisioning.services import common

    audit.audit_append_many = unchained_append_many  # audit_append calls it through the module
    common.audit_append_many = unchained_append_many  # device transitions imported it by name


def vend_worker(serials: list[str], tokens: dict[str, str], unchained: bool, seconds: float) -> dict[str, Any]:
    from provisioning.services import certificate_vend

    if unchained:
        write_unchained()
    done, started = 0, time.monotonic()
    deadline = started + seconds
    for serial in serials:
        if time.monotonic() >= deadline:
            break
        certificate_vend(serial=serial, token=tokens[serial], csr=None, client_address="127.0.0.1")
        done += 1
    return {"count": done, "started": started, "ended": time.monotonic()}


def append_worker(seconds: float, unchained: bool = False) -> dict[str, Any]:
    from django.db import transaction

    from provisioning.audit import audit_append
    from provisioning.models import AuditKind

    if unchained:
        write_unchained()  # audit_append reaches audit_append_many through the module

    durations = []
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        with transaction.atomic():
            # Around the append only: with a chain head to lock, this is where a writer waits for it.
            t0 = time.perf_counter()
            audit_append(kind=AuditKind.VEND_BUSY, actor="bench", serial=f"APP-{os.getpid()}", data={"n": 1})
            durations.append(time.perf_counter() - t0)
    return {"count": len(durations), "started": started, "ended": time.monotonic(), "durations": durations}


def _sequencer(stop: Any) -> None:
    """The worker's audit sequencer, as `sync_dynamodb` runs it, until `stop` is set."""
    import threading

    from django.db import connection

    from provisioning.audit import audit_follow

    stopping = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), stopping.set()), daemon=True).start()
    audit_follow(stop=stopping)
    connection.close()


def _child(barrier: Any, results: Any, target: Any, args: tuple[Any, ...]) -> None:
    from django.db import connection

    connection.ensure_connection()  # each process its own connection, opened before the clock starts
    barrier.wait()
    results.put(target(*args))
    connection.close()


def run_together(workers: int, target: Any, args_for: Any, *, sequencer: bool = False) -> list[dict[str, Any]]:
    """Fork `workers` processes, start them together, return what each reported. With `sequencer`, the
    audit sequencer runs in one more process beside them; once they are done it chains what is left, and
    the seconds that took are added to the last report as "catch_up_s"."""
    from django.db import connections

    from provisioning.audit import audit_unchained

    connections.close_all()  # a forked child must not share the parent's connection
    context = multiprocessing.get_context("fork")
    barrier, results, stop = context.Barrier(workers), context.Queue(), context.Event()
    processes = [context.Process(target=_child, args=(barrier, results, target, args_for(i))) for i in range(workers)]
    chaining = context.Process(target=_sequencer, args=(stop,)) if sequencer else None
    for process in [*processes, *([chaining] if chaining else [])]:
        process.start()
    reports = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        if process.exitcode != 0:
            raise RuntimeError(f"a benchmark worker exited with {process.exitcode}")
    if chaining is not None:
        finished = time.monotonic()
        while audit_unchained()[0] and time.monotonic() < finished + 60:
            time.sleep(0.02)
        reports[-1]["catch_up_s"] = time.monotonic() - finished
        if left := audit_unchained()[0]:
            # A sequencer that stopped (its log says why) would make the chained rounds look free.
            raise RuntimeError(f"the sequencer left {left} events unchained a minute after the writers ended")
        stop.set()
        chaining.join(timeout=30)
        connections.close_all()
    return reports


def rate(reports: list[dict[str, Any]]) -> float:
    return sum(r["count"] for r in reports) / (max(r["ended"] for r in reports) - min(r["started"] for r in reports))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(seconds: float, rounds: int) -> dict[str, Any]:
    from django.db import connection

    from bench.instant_aws import answer_at_once
    from provisioning import services

    answer_at_once()
    unchained_table()
    per_worker = {n: max(10, int(VENDS_PER_SECOND_CEILING * seconds / n)) for n in WORKERS}
    plan = [(r, n, unchained) for r in range(rounds) for n in WORKERS for unchained in (False, True)]
    serials = {
        (r, n, u): [f"PG-{r}-{n}-{int(u)}-{w}-{i:05d}" for w in range(n) for i in range(per_worker[n])]
        for r, n, u in plan
    }
    everyone = [s for batch in serials.values() for s in batch] + ["PG-WARM"]
    services.devices_import(rows=[services.ImportRow(line=2, serial=s, product="b") for s in everyone], actor="b")
    tokens = {t.serial: t.token for t in services.tokens_issue(serials=everyone, actor="b")}
    # Warm this process before forking: every child inherits the imports and caches a first vend fills.
    services.certificate_vend(serial="PG-WARM", token=tokens["PG-WARM"], csr=None, client_address="127.0.0.1")

    vends: dict[str, list[float]] = {}
    catch_up: dict[str, list[float]] = {}
    for r, n, unchained in plan:
        batch = serials[(r, n, unchained)]
        reports = run_together(
            n,
            vend_worker,
            lambda w, b=batch, n=n, u=unchained: (b[w * per_worker[n] : (w + 1) * per_worker[n]], tokens, u, seconds),
            sequencer=not unchained,
        )
        vends.setdefault(f"{'unchained' if unchained else 'chained'} {n}", []).append(rate(reports))
        if not unchained:
            catch_up.setdefault(str(n), []).append(reports[-1]["catch_up_s"])

    # The same appends as plain INSERTs into the yardstick's table, no sequencer: the time around an append
    # that the machine itself gives N processes on its cores, whatever the log does.
    appends: dict[str, dict[str, float]] = {}
    for n in WORKERS:
        for unchained in (False, True):
            reports = run_together(n, append_worker, lambda _w, u=unchained: (seconds, u), sequencer=not unchained)
            durations = [d for r in reports for d in r["durations"]]
            appends[f"{n} unchained" if unchained else str(n)] = {
                "rate": rate(reports),
                "p50_ms": percentile(durations, 0.5) * 1000,
                "p99_ms": percentile(durations, 0.99) * 1000,
                "max_ms": max(durations) * 1000,
                "catch_up_s": reports[-1].get("catch_up_s", 0.0),
            }
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    return {
        "vends": vends,
        "catch_up": catch_up,
        "appends": appends,
        "postgresql": version,
        "seconds": seconds,
        "rounds": rounds,
    }


if __name__ == "__main__":
    django.setup()
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(json.dumps(measure(seconds, rounds)))
