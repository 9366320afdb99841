"""`make bench`: measure the portal and write BENCHMARKS.md.

Each benchmark runs against local fakes or emulators only (127.0.0.1), with bounded request counts.
Run one with `python -m bench.run overhead` (names: overhead stages burst bulk admin mirror flood spray).
What is measured inside a Django process of its own is a module here too (`bench.overhead`,
`bench.admin_pages`, `bench.mirror_drain`, `bench.mirror_lag`), started with `run_module`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts.processes import (
    PYTHON,
    ROOT,
    Children,
    child_env,
    emulator_command,
    free_port,
    gunicorn_command,
    wait_for_port,
)
from scripts.processes import manage as manage_process

WORK = Path(tempfile.mkdtemp(prefix="cvm-bench-"))

BASE_ENV = {
    "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnopqrstuv",
    "CVM_TOKEN_HMAC_KEY": "bench-token-key-0123456789abcdefghijklmnopqr",
    "CVM_AUDIT_HMAC_KEY": "bench-audit-key-0123456789abcdefghijklmnopqr",
    "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
    "SECURE_SSL_REDIRECT": "false",
    "DATABASE_URL": f"sqlite:///{WORK / 'bench.sqlite3'}",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "LOG_LEVEL": "WARNING",
    "CVM_FAILED_TOKENS_PER_SERIAL": "1000000",
    "CVM_FAILED_TOKENS_PER_ADDRESS": "1000000",
    "CVM_REQUESTS_PER_ADDRESS": "1000000",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def manage(env: dict[str, str], *args: str) -> str:
    return manage_process(env, *args).stdout


def run_module(module: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run a benchmark program (`python -m bench.NAME`) in a fresh Django process; it prints one JSON line last."""
    result = subprocess.run(
        [PYTHON, "-m", module, *args], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "cvm_portal.settings"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"benchmark process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def fresh_env(name: str, **extra: str) -> dict[str, str]:
    env = child_env(drop=("AWS_", "DATABASE_URL", "CACHE_URL", "CVM_"))
    env.update(BASE_ENV, DATABASE_URL=f"sqlite:///{WORK / (name + '.sqlite3')}", **extra)
    manage(env, "migrate", "-v0")
    return env


def devices_with_tokens(env: dict[str, str], prefix: str, count: int) -> dict[str, str]:
    source = WORK / f"{prefix}.csv"
    source.write_text("serial,product\n" + "".join(f"{prefix}-{i:06d},bench\n" for i in range(count)))
    manage(env, "import_serials", str(source))
    out = WORK / f"{prefix}-tokens.csv"
    manage(env, "issue_tokens", "--all-registered", "--out", str(out))
    return {row["serial"]: row["token"] for row in csv.DictReader(out.open())}


# --- 1. overhead: the whole stack against a bare DRF endpoint, in one process -----------------------


def bench_overhead() -> dict[str, Any]:
    data = run_module("bench.overhead", fresh_env("overhead"), "300")
    vend, bare = data["vend"], data["bare"]
    median_ratio = statistics.median(vend) / statistics.median(bare)
    p99_ratio = percentile(vend, 0.99) / percentile(bare, 0.99)
    return {
        "name": "overhead",
        "figures": {
            "vends": len(vend),
            "vend median ms": statistics.median(vend) * 1000,
            "vend p99 ms": percentile(vend, 0.99) * 1000,
            "bare DRF median ms": statistics.median(bare) * 1000,
            "bare DRF p99 ms": percentile(bare, 0.99) * 1000,
            "median ratio": median_ratio,
            "p99 ratio": p99_ratio,
        },
        "target": "vend / bare DRF endpoint <= 2x (median and p99)",
        "met": median_ratio <= 2 and p99_ratio <= 2,
    }


# --- flood and spray: wrong tokens from other processes while legitimate devices vend ----------------


FLOOD_RATE = 500.0  # requests/s the over-limit address offers
ATTACKER = "198.51.100.66"  # the over-limit address of `flood`
FACTORY = "192.0.2.10"  # where the legitimate devices vend from


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def server_cpu_seconds(process: subprocess.Popen) -> float:
    """CPU time of a gunicorn master and its workers, those gone included (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")

    def times(pid: int, reaped: bool) -> float:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return sum(int(x) for x in fields[11 : 15 if reaped else 13]) / tick
        return 0.0

    with contextlib.suppress(OSError):
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return times(process.pid, reaped=True) + sum(times(int(pid), reaped=False) for pid in workers)


def attacked_portal(children: Children, name: str, devices: int, cache_db: int) -> dict[str, Any]:
    """The portal under gunicorn (the project's configuration) behind a trusted proxy on 127.0.0.1, its
    failure limits as in production, the cache in Redis, AWS IoT a fake that answers at once, unpaced."""
    import redis

    redis.Redis(db=cache_db).flushdb()
    fake_port = free_port()
    env = fresh_env(
        name,
        AWS_ENDPOINT_URL_IOT=f"http://127.0.0.1:{fake_port}",
        AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:9",
        CACHE_URL=f"redis://127.0.0.1:6379/{cache_db}",
        CVM_FAILED_TOKENS_PER_ADDRESS="100",
        CVM_FAILED_TOKENS_PER_SERIAL="10",
        CVM_REQUESTS_PER_ADDRESS="6000",
        CVM_TRUSTED_PROXY_ADDRESSES="127.0.0.1",
        CVM_TRUSTED_PROXIES="1",
        # The fake has no quota: pacing vends to AWS IoT's would cap them at 10/s and hide what a flood costs.
        CVM_AWS_RATES="off",
    )
    fake = children.start(
        "fake AWS IoT", [PYTHON, "-m", "bench.fake_iot", "--port", str(fake_port), "--latency-ms", "0"], env=env
    )
    wait_for_port(fake_port, what="the fake AWS IoT", process=fake)
    tokens = devices_with_tokens(env, name.upper()[:3], devices)
    url, ca = portal(children, env, workers=None, threads=None)  # type: ignore[arg-type]
    gunicorn = children.running[-1][1]
    return {"env": env, "url": url, "ca": ca, "tokens": tokens, "gunicorn": gunicorn}


class Attacker:
    """`bench.flood_client` in a process of its own, started and waited for."""

    def __init__(self, portal: dict[str, Any], *args: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "bench.flood_client", "--url", portal["url"], "--ca", str(portal["ca"]), *args],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env=child_env(),
        )  # fmt: skip
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "started":
            raise RuntimeError("the flood client did not start")

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self) -> dict[str, Any]:
        out, _ = self.process.communicate(timeout=120)
        if self.process.returncode != 0:
            raise RuntimeError("the flood client failed")
        return json.loads(out.strip().splitlines()[-1])


class Vendor:
    """Legitimate devices vending one after another through one kept-alive connection, from FACTORY."""

    def __init__(self, portal: dict[str, Any], serials: Any, lock: threading.Lock | None = None) -> None:
        self.url, self.tokens, self.serials = portal["url"] + "/api/v1/certificates", portal["tokens"], serials
        self.session = session(portal["ca"])
        self.lock = lock or threading.Lock()  # vendors sharing one supply of devices share its lock

    def vend(self) -> float:
        with self.lock:
            serial = next(self.serials)
        started = time.perf_counter()
        response = self.session.post(
            self.url, json={"serial": serial, "token": self.tokens[serial]}, headers={"X-Forwarded-For": FACTORY},
            timeout=60,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if response.status_code != 201:
            raise RuntimeError(f"a legitimate vend was answered {response.status_code}: {response.text[:200]}")
        return elapsed


def merged(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for status, n in c.items():
            total[status] = total.get(status, 0) + n
    return dict(sorted(total.items()))


def bench_flood(flood: int = 10_000, rounds: int = 4, rate: float = FLOOD_RATE) -> dict[str, Any]:
    """Issue 13: an address over its limit sends `flood` more wrong tokens (in `rounds` parts, at `rate`
    per second) while one device after another vends; rounds with and without the flood alternate."""
    started_load = load()
    with Children() as children:
        target = attacked_portal(children, "flood", devices=1500, cache_db=12)
        vendor = Vendor(target, iter(target["tokens"]))
        for _ in range(10):  # warm: imports, connections, the first queries of each worker
            vendor.vend()
        # Over the limit: CVM_FAILED_TOKENS_PER_ADDRESS refusals, then the lockout.
        warm = Attacker(target, "--rate", "200", "--count", "120", "--connections", "1", "--address", ATTACKER)
        over = warm.result()["statuses"]
        if over.get("403", 0) != 100 or over.get("429", 0) != 20:
            raise RuntimeError(f"the attacker did not reach its limit: {over}")
        rows_before = audit_rows(target["env"], ATTACKER)

        # The cost of one refused request to the server, measured alone.
        cpu_before = server_cpu_seconds(target["gunicorn"])
        alone = Attacker(target, "--rate", str(rate), "--count", "2000", "--address", ATTACKER).result()
        cpu_per_request = (server_cpu_seconds(target["gunicorn"]) - cpu_before) / alone["sent"]

        quiet: list[float] = []
        during: list[float] = []
        answers: list[dict[str, int]] = []
        flood_seconds = 0.0
        for _ in range(rounds):
            # Without: as many vends as a flood round takes at the quiet pace.
            round_started = time.perf_counter()
            while time.perf_counter() - round_started < flood / rounds / rate:
                quiet.append(vendor.vend())
            attacker = Attacker(
                target, "--rate", str(rate), "--count", str(flood // rounds), "--address", ATTACKER
            )  # fmt: skip
            while attacker.running():
                during.append(vendor.vend())
            result = attacker.result()
            answers.append(result["statuses"])
            flood_seconds += result["seconds"]
        rows_added = audit_rows(target["env"], ATTACKER) - rows_before
    statuses = merged(answers)
    slowdown = statistics.median(during) / statistics.median(quiet) - 1
    return {
        "name": "flood",
        "figures": {
            "load average at start (1/5/15 min)": started_load,
            "flood requests": sum(statuses.values()),
            "answers": statuses,
            "audit rows the flood added": rows_added,
            "flood requests/s (offered / achieved)": f"{rate:.0f} / {sum(statuses.values()) / flood_seconds:.0f}",
            "server CPU ms per refused request": cpu_per_request * 1000,
            "vends without / with the flood": f"{len(quiet)} / {len(during)}",
            "vend median ms, without the flood": statistics.median(quiet) * 1000,
            "vend median ms, during the flood": statistics.median(during) * 1000,
            "vend p90 ms, without / during": f"{percentile(quiet, 0.9) * 1000:.1f} / "
            f"{percentile(during, 0.9) * 1000:.1f}",
            "slowdown of a legitimate vend %": slowdown * 100,
            "load average at end (1/5/15 min)": load(),
        },
        "target": "10,000 requests from an over-limit address add at most a handful of rows; a vend beside them "
        "slows by at most 20 %",
        "met": rows_added <= 5 and slowdown <= 0.2,
    }


def audit_rows(env: dict[str, str], address: str) -> int:
    import sqlite3

    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        query = "SELECT COUNT(*) FROM provisioning_auditevent WHERE client_address = ?"
        return db.execute(query, (address,)).fetchone()[0]


def bench_spray(rate: float = 150.0, rounds: int = 3, seconds: float = 8.0, clients: int = 4) -> dict[str, Any]:
    """Issue 18: legitimate vends/s (CLIENTS devices at a time) with and without `rate` wrong tokens/s from
    thousands of addresses, each under its own limit, half against registered serials; rounds alternate."""
    started_load = load()
    with Children() as children:
        target = attacked_portal(children, "spray", devices=4000, cache_db=11)
        serials = list(target["tokens"])
        guessed = WORK / "spray-targets.txt"
        guessed.write_text("\n".join(serials[-1000:]))  # registered devices the attacker guesses tokens for
        supply, lock = iter(serials[:-1000]), threading.Lock()
        vendors = [Vendor(target, supply, lock) for _ in range(clients)]
        for vendor in vendors:
            vendor.vend()
        flood_args = ["--rate", str(rate), "--addresses", "20000", "--serials", str(guessed), "--connections", "8"]

        cpu_before = server_cpu_seconds(target["gunicorn"])
        alone = Attacker(target, *flood_args, "--seconds", "4").result()
        cpu_per_refusal = (server_cpu_seconds(target["gunicorn"]) - cpu_before) / alone["sent"]

        def vends_per_second() -> float:
            stop = time.perf_counter() + seconds

            def device_line(vendor: Vendor) -> int:
                done = 0
                while time.perf_counter() < stop:
                    vendor.vend()
                    done += 1
                return done

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                done = sum(pool.map(device_line, vendors))
            return done / (time.perf_counter() - started)

        quiet: list[float] = []
        during: list[float] = []
        answers: list[dict[str, int]] = []
        achieved: list[float] = []
        for _ in range(rounds):
            quiet.append(vends_per_second())
            attacker = Attacker(target, *flood_args, "--seconds", str(seconds + 1))
            during.append(vends_per_second())
            result = attacker.result()
            answers.append(result["statuses"])
            achieved.append(result["sent"] / result["seconds"])
    change = sum(during) / sum(quiet) - 1
    return {
        "name": "spray",
        "figures": {
            "load average at start (1/5/15 min)": started_load,
            "wrong tokens/s (offered / achieved)": f"{rate:.0f} / {statistics.mean(achieved):.0f}",
            "answers to the wrong tokens": merged(answers),
            "server CPU ms per wrong-token refusal": cpu_per_refusal * 1000,
            "vends/s without the flood, per round": ", ".join(f"{v:.1f}" for v in quiet),
            "vends/s during the flood, per round": ", ".join(f"{v:.1f}" for v in during),
            "legitimate vend throughput change %": change * 100,
            "load average at end (1/5/15 min)": load(),
        },
        "target": f"legitimate vends/s while {rate:.0f} wrong tokens/s arrive from many addresses: at most 20 % fewer",
        "met": change >= -0.2,
    }


# --- 2. stages: HTTPS through gunicorn, every AWS call 50 ms ----------------------------------------


def portal(children: Children, env: dict[str, str], *, workers: int, threads: int) -> tuple[str, Path]:
    from scripts.local_tls import ensure_tls

    tls = ensure_tls(WORK / "tls")
    port = free_port()
    command = gunicorn_command(f"127.0.0.1:{port}", tls=tls, workers=workers, threads=threads)
    wait_for_port(port, what="the portal", process=children.start("portal", command, env=env))
    return f"https://127.0.0.1:{port}", tls.ca_cert


def session(ca: Path) -> Any:
    import requests

    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override `verify`
    s.verify = str(ca)
    return s


def bench_stages() -> dict[str, Any]:
    with Children() as children:
        fake_port = free_port()
        env = fresh_env("stages", AWS_ENDPOINT_URL_IOT=f"http://127.0.0.1:{fake_port}",
                        AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:9")  # fmt: skip
        fake = children.start(
            "fake AWS IoT", [PYTHON, "-m", "bench.fake_iot", "--port", str(fake_port), "--latency-ms", "50"], env=env
        )
        wait_for_port(fake_port, what="the fake AWS IoT", process=fake)
        tokens = devices_with_tokens(env, "STG", 60)
        url, ca = portal(children, env, workers=1, threads=8)
        s = session(ca)
        times = []
        for i, (serial, token) in enumerate(tokens.items()):
            t0 = time.perf_counter()
            response = s.post(url + "/api/v1/certificates", json={"serial": serial, "token": token}, timeout=30)
            elapsed = time.perf_counter() - t0
            assert response.status_code == 201, response.text
            if i >= 5:
                times.append(elapsed)
        median = statistics.median(times)
        return {
            "name": "stages",
            "figures": {
                "vends": len(times),
                "median ms": median * 1000,
                "p90 ms": percentile(times, 0.9) * 1000,
                "p99 ms": percentile(times, 0.99) * 1000,
            },
            "target": "median <= 3 x 50 ms + 15 ms = 165 ms",
            "met": median <= 0.165,
        }


# --- 3. burst: 500 devices at once against a 15 TPS quota -------------------------------------------


def bench_burst(devices: int = 500, quota: float = 15.0) -> dict[str, Any]:
    with Children() as children:
        import redis

        redis.Redis(db=14).flushdb()
        fake_port = free_port()
        # The governor is set a little under the account's quota (96 %), as it should be in production:
        # the two clocks never tick exactly together, and a call that lands early is throttled.
        rates = ",".join(
            f"{op}={quota * 0.96}"
            for op in ("default", "CreateThing", "CreateKeysAndCertificate", "AttachPolicy", "AttachThingPrincipal",
                       "UpdateCertificate", "DescribeEndpoint")
        )  # fmt: skip
        env = fresh_env(
            "burst",
            AWS_ENDPOINT_URL_IOT=f"http://127.0.0.1:{fake_port}",
            AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:9",
            CACHE_URL="redis://127.0.0.1:6379/14",
            CVM_AWS_RATES=rates,
            CVM_AWS_QUEUE_SECONDS="5",
        )
        fake = children.start(
            "fake AWS IoT",
            [PYTHON, "-m", "bench.fake_iot", "--port", str(fake_port), "--latency-ms", "20", "--quota", str(quota)],
            env=env,
        )
        wait_for_port(fake_port, what="the fake AWS IoT", process=fake)
        tokens = devices_with_tokens(env, "BST", devices)
        url, ca = portal(children, env, workers=2, threads=32)
        statuses: dict[int, int] = {}
        done_at: list[float] = []
        lock = threading.Lock()

        def device(item: tuple[str, str]) -> None:
            serial, token = item
            s = session(ca)
            for _ in range(200):
                response = s.post(url + "/api/v1/certificates", json={"serial": serial, "token": token}, timeout=60)
                with lock:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 201:
                    with lock:
                        done_at.append(time.monotonic())
                    return
                if response.status_code not in (409, 429, 503):
                    raise AssertionError(f"{serial}: {response.status_code} {response.text}")
                time.sleep(min(10.0, float(response.headers.get("Retry-After", "1"))))

        started = time.monotonic()
        with ThreadPoolExecutor(100) as pool:
            list(pool.map(device, tokens.items()))
        elapsed = max(done_at) - started
        rate = len(done_at) / elapsed
        # Sustained: the steady middle of the run, between the 10th and the 90th percent of devices done,
        # leaving out the ramp-up (connections, first bursts) and the tail (the last stragglers' retries).
        finished = sorted(done_at)
        low, high = finished[len(finished) // 10], finished[(len(finished) * 9) // 10]
        sustained = (len(finished) * 0.8) / (high - low)
        stats = session(ca).get(f"http://127.0.0.1:{fake_port}/stats", timeout=5).json()
        return {
            "name": "burst",
            "figures": {
                "devices": devices,
                "provisioned": len(done_at),
                "seconds": elapsed,
                "issuance per s, whole run": rate,
                "issuance per s, sustained (10 %-90 % of devices)": sustained,
                "quota per s": quota,
                "sustained share of quota %": 100 * sustained / quota,
                "answers": dict(sorted(statuses.items())),
                "AWS throttles": sum(stats["throttled"].values()),
            },
            "target": ">= 90 % of the quota sustained, every device provisioned, no error but 429/503",
            "met": len(done_at) == devices and sustained >= 0.9 * quota and set(statuses) <= {201, 409, 429, 503},
        }


# --- 4. bulk: import and tokens for 100,000 serials ---------------------------------------------------


def timed_command(env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of one management command in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen([PYTHON, "manage.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{args[0]} failed")
    return elapsed, usage.ru_maxrss / 1024


def bench_bulk(count: int = 100_000) -> dict[str, Any]:
    env = fresh_env("bulk")
    source = WORK / "bulk.csv"
    source.write_text("serial,product\n" + "".join(f"BULK-{i:06d},meter\n" for i in range(count)))
    import_seconds, import_mib = timed_command(env, "import_serials", str(source))
    tokens_seconds, tokens_mib = timed_command(env, "issue_tokens", "--all-registered", "--out", str(WORK / "t.csv"))
    return {
        "name": "bulk",
        "figures": {
            "serials": count,
            "import_serials s": import_seconds,
            "import_serials peak RSS MiB": import_mib,
            "issue_tokens s": tokens_seconds,
            "issue_tokens peak RSS MiB": tokens_mib,
        },
        "target": "each <= 10 s (process start included)",
        "met": import_seconds <= 10 and tokens_seconds <= 10,
        "env": env,
    }


# --- 5. admin: changelists with 100,000 devices and 1,000,000 audit events -----------------------------


def bench_admin(env: dict[str, str]) -> dict[str, Any]:
    data = run_module("bench.admin_pages", env)
    pages = data["pages"]
    return {
        "name": "admin",
        "figures": {
            "devices": data["devices"],
            "audit events": data["events"],
            **{f"{name}: ms / queries": f"{v['ms']:.0f} / {v['queries']}" for name, v in pages.items()},
        },
        "target": "each changelist <= 300 ms server time, bounded queries",
        "met": all(v["ms"] <= 300 and v["queries"] <= 20 for v in pages.values()),
    }


# --- 6. mirror: outbox drain rate and lag ----------------------------------------------------------------


def bench_mirror(changes: int = 5000) -> dict[str, Any]:
    with Children() as children:
        port = free_port()
        env = fresh_env("mirror", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        emulator = children.start("AWS emulator", emulator_command(port), env=env)
        wait_for_port(port, what="the AWS emulator", process=emulator)
        manage(env, "bootstrap_aws")
        source = WORK / "mirror.csv"
        source.write_text("serial\n" + "".join(f"MIR-{i:06d}\n" for i in range(changes)))
        manage(env, "import_serials", str(source))
        started = time.perf_counter()
        manage(env, "sync_dynamodb", "--once")
        drain_seconds = time.perf_counter() - started
        own = drain_without_dynamodb(env, changes)
        lag = measure_lag(env, children)
        return {
            "name": "mirror",
            "figures": {
                "changes": changes,
                "drain s": drain_seconds,
                "changes per s": changes / drain_seconds,
                "changes per s, DynamoDB answering at once (the portal's own share)": own,
                **lag,
            },
            "target": ">= 500 changes/s against the emulator; lag about a second while vending",
            "met": changes / drain_seconds >= 500,
        }


def drain_without_dynamodb(env: dict[str, str], changes: int) -> float:
    """The drain rate the portal itself sustains: leasing, marking done, with DynamoDB replaced by a no-op."""
    return run_module("bench.mirror_drain", env, str(changes))["rate"]


def measure_lag(env: dict[str, str], children: Children) -> dict[str, float]:
    """Vend 100 devices (zero-latency AWS, in-process) while a worker drains; lag = done_at - created_at."""
    children.start("DynamoDB sync", [PYTHON, "manage.py", "sync_dynamodb"], env=env)
    data = run_module("bench.mirror_lag", env, "100")
    return {"lag while vending: changes": data["n"], "lag median s": data["median"], "lag max s": data["max"]}


# --- report ------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
    )


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}.",
        "Reproduce: `make bench` (all) or `.venv/bin/python -m bench.run NAME` (one; names below).",
        "",
        "| benchmark | target | met |",
        "|---|---|---|",
    ]
    lines += [f"| `{r['name']}` | {r['target']} | {'yes' if r['met'] else '**no**'} |" for r in results]
    for r in results:
        lines += ["", f"## `{r['name']}`", "", DESCRIPTIONS[r["name"]], "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in r["figures"].items()]
        if r["name"] in NOTES:
            lines += ["", NOTES[r["name"]]]
    return "\n".join(lines) + "\n"


DESCRIPTIONS = {
    "overhead": "A vend through the whole Django/DRF stack (middleware, validation, claim, two transactions "
    "with audit and outbox rows, on SQLite) with an in-process AWS fake that answers at once, against a bare DRF "
    "endpoint with the same middleware that parses the same body and answers 201. Both in one process, "
    "interleaved, through Django's test client.",
    "stages": "Sequential vends over HTTPS through gunicorn (1 worker, 8 threads) against a fake AWS IoT that "
    "adds 50 ms to every call. Three dependent stages: create (thing and certificate concurrently), attach "
    "(policy and thing concurrently), activate.",
    "burst": "500 devices at once (100 concurrent clients) through gunicorn (2 workers x 32 threads) against a "
    "fake AWS IoT that allows 15 calls/s per API and throttles beyond (20 ms per call). The governor shares a "
    "14.4/s schedule per API (96 % of the quota) through Redis; devices retry on 409/429/503 after `Retry-After`.",
    "bulk": "`import_serials` of 100,000 serials, then `issue_tokens --all-registered` for all of them, each a "
    "separate process (start-up included); peak resident memory of that process.",
    "admin": "Server time (median of 5, in-process test client) and query count of admin changelists as a "
    "superuser, with 100,000 devices, 100,000 certificates and 1,000,000 audit events in SQLite.",
    "flood": "An address goes over its failed-token limit (100 per hour), then sends 10,000 more wrong tokens "
    "at 500/s from a process of its own (4 kept-alive connections) while legitimate devices vend one after "
    "another from another process, through gunicorn (the project's configuration: 3 workers x 16 threads "
    "here) over TLS, behind a trusted proxy address, the cache in Redis, AWS IoT a fake answering at once, "
    "unpaced. "
    "Four rounds without the flood alternate with four rounds of 2,500 flood requests each; the server's "
    "CPU per refused request is measured alone, on 2,000 of them.",
    "spray": "Four legitimate devices at a time vend through gunicorn (as in `flood`) for 8 s; in alternate "
    "rounds a process of its own sends 150 wrong tokens/s from 20,000 addresses (each far under its limit), "
    "half for 1,000 registered serials and half for unknown ones, so every one is a full refusal: looked "
    "up, counted and audited. Three rounds each; the server's CPU per refusal is measured alone, over 4 s.",
    "mirror": "`sync_dynamodb --once` draining 5,000 changes into the local AWS emulator (moto server) over "
    "HTTP, 16 writes in flight; the same drain with DynamoDB replaced by an in-process no-op (what the portal "
    "itself can do); then the lag from commit to DynamoDB while 100 devices vend with a worker running.",
}
NOTES: dict[str, str] = {
    "overhead": "Why the ratio is far above 2x: the bare endpoint touches no database, while a vend makes "
    "about 19 SQL statements in three steps (limit check and lookup; the claim with its audit event and "
    "outbox row, committed; the certificate, the state change, its audit event and outbox row, committed). "
    "Those two durable commits and the hash-chained audit appends are what the guarantees cost; with the "
    "queries at about 2 ms, most of the rest is Django ORM query building. The absolute figure, not the "
    "ratio, is what a device sees, and it is small beside AWS IoT's own latency (see `stages`).",
    "stages": "The three AWS stages account for 150 ms; the rest is the portal's own work per vend (see "
    "`overhead`), TLS and HTTP through gunicorn, and botocore building and parsing five requests.",
    "burst": "No device saw an error; every retry honoured `Retry-After`. The whole-run rate includes the "
    "start (100 TLS handshakes, the first bursts) and the tail.",
    "bulk": "Both commands write one row per device to three tables (device, audit event, outbox) in one "
    "transaction, through plain `executemany`; the audit events are hash-chained one after another. Not met: "
    "a profile of the import puts about a third of the time in SQLite's inserts and index upkeep, a third in "
    "the JSON and SHA-256 of the per-device audit events and outbox items, and the rest in Django start-up "
    "and reading rows back. Moving from the ORM's bulk_create to `executemany` took it from 50 s to 14 s "
    "(import) and from 105 s to 17 s (tokens); keeping one audit event per device was chosen over the target.",
    "mirror": "The emulator is the limit here, not the portal: measured directly, moto's server accepts "
    "about 115 PutItem calls/s from one client and about 170/s from 16, conditional or not, on this "
    "machine. The portal's own side of the drain is the no-op figure. The lag while vending is the backlog "
    "the emulator's pace leaves behind; against DynamoDB, which takes thousands of writes per second, it "
    "is the worker's half-second poll.",
}

BENCHES: dict[str, Callable[..., dict[str, Any]]] = {
    "overhead": bench_overhead,
    "stages": bench_stages,
    "burst": bench_burst,
    "bulk": bench_bulk,
    "mirror": bench_mirror,
    "flood": bench_flood,
    "spray": bench_spray,
}


def main() -> int:
    wanted = sys.argv[1:] or ["overhead", "stages", "burst", "bulk", "admin", "mirror", "flood", "spray"]
    results = []
    bulk_env = None
    try:
        for name in wanted:
            print(f"== {name}", flush=True)
            if name == "admin":
                if bulk_env is None:
                    bulk = bench_bulk()
                    bulk_env = bulk.pop("env")
                result = bench_admin(bulk_env)
            else:
                result = BENCHES[name]()
                if name == "bulk":
                    bulk_env = result.pop("env")
            print(json.dumps(result, default=str, indent=1), flush=True)
            results.append(result)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    if set(wanted) == set(DESCRIPTIONS):
        (ROOT / "BENCHMARKS.md").write_text(report(results))
        print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
