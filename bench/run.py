"""`make bench`: measure the portal and write BENCHMARKS.md.

Each benchmark runs against local fakes or emulators only (127.0.0.1), with bounded request counts.
Run one with `python -m bench.run overhead` (names: overhead vend stages burst bulk admin mirror flood
spray pg_throughput audit_chain); `python -m bench.run --update NAME ...` also puts their sections and
summary rows into BENCHMARKS.md, keeping the others, and says so under its header.
What is measured inside a Django process of its own is a module here too (`bench.overhead`, `bench.vend`,
`bench.admin_pages`, `bench.mirror_drain`, `bench.mirror_lag`), started with `run_module`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import ipaddress
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
from typing import Any, NoReturn

from scripts.processes import (
    PYTHON,
    ROOT,
    Children,
    child_env,
    emulator_command,
    free_port,
    gunicorn_command,
    wait_for_port,
    wait_until,
)
from scripts.processes import manage as manage_process

# Made by main() when a run starts and removed when it ends (importing this module leaves nothing behind);
# named after the process, and refused if it already exists.
WORK = Path(tempfile.gettempdir()) / f"cvm-bench-{os.getpid()}"

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
    env.update(BASE_ENV, DATABASE_URL=f"sqlite:///{WORK / (name + '.sqlite3')}")
    env.update(extra)
    manage(env, "migrate", "-v0")
    return env


def devices_with_tokens(env: dict[str, str], prefix: str, count: int, files: str = "") -> dict[str, str]:
    source = WORK / f"{files or prefix}.csv"
    source.write_text("serial,product\n" + "".join(f"{prefix}-{i:06d},bench\n" for i in range(count)))
    manage(env, "import_serials", str(source))
    out = WORK / f"{files or prefix}-tokens.csv"  # a new file each time: issue_tokens never overwrites one
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


# --- vend: the vend service itself, in one process (bench/vend.py) ----------------------------------


def bench_vend() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    medians: dict[str, float] = {}
    for database, data in on_each_database("bench.vend", "vend", "300", figures=figures):
        ms = {name: statistics.median(data[name]) * 1000 for name in ("vend", "wrong_token", "unknown_serial")}
        medians[database] = ms["vend"]
        figures[f"{database}: vend / wrong token / unknown serial, median ms"] = (
            f"{ms['vend']:.2f} / {ms['wrong_token']:.2f} / {ms['unknown_serial']:.2f}"
        )
        figures[f"{database}: statements per vend"] = data["statements"]
        figures[f"{database}: load average (1, 5, 15 min) before"] = data["load"][0]
    return {
        "name": "vend",
        "figures": figures,
        "target": "in-process vend <= 3 ms on SQLite, <= 6 ms on PostgreSQL (medians)",
        "met": medians.get("SQLite", 99.0) <= 3 and medians.get("PostgreSQL", 99.0) <= 6,
    }


# --- flood and spray: wrong tokens from other processes while legitimate devices vend ----------------


FLOOD_RATE = 500.0  # requests/s the over-limit address offers
# Where the over-limit address of `flood` and the legitimate devices come from. Straight at gunicorn (which
# trusts the loopback address as its proxy) they are written in X-Forwarded-For; behind nginx, which
# writes that header itself, they are the connections' own source addresses (127.0.0.0/8 is loopback).
ATTACKER = {"gunicorn": "198.51.100.66", "nginx": "127.66.0.1"}
FACTORY = {"gunicorn": "192.0.2.10", "nginx": "127.0.0.10"}
FRONTS = ("nginx", "gunicorn")  # the deployment (deploy/nginx in front), then gunicorn facing clients alone


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def proc_stat(pid: int | str) -> tuple[str, list[str]]:
    """A process's name and the fields of /proc/PID/stat after it (Linux; the name may hold spaces and
    parentheses, so it ends at the last ")"). Raises OSError when the process is gone."""
    head, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
    return head.partition("(")[2], rest.split()


def proc_cpu_seconds(fields: list[str], *, reaped: bool) -> float:
    """utime + stime of a process's stat fields, with its reaped children's when `reaped`."""
    return sum(int(x) for x in fields[11 : 15 if reaped else 13]) / os.sysconf("SC_CLK_TCK")


def proc_children(pid: int) -> list[str]:
    """The pids of a process's children (empty when it is gone)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return []


def server_cpu_seconds(process: subprocess.Popen) -> float:
    """CPU time of a server's master process (gunicorn's, nginx's) and its workers, those gone included
    (Linux /proc)."""

    def times(pid: int | str, reaped: bool) -> float:
        with contextlib.suppress(OSError):
            return proc_cpu_seconds(proc_stat(pid)[1], reaped=reaped)
        return 0.0

    return times(process.pid, reaped=True) + sum(times(pid, reaped=False) for pid in proc_children(process.pid))


def attacked_portal(
    children: Children, name: str, devices: int, cache_db: int, front: str = "nginx", database_url: str = ""
) -> dict[str, Any]:
    """The portal under gunicorn (the project's configuration), its failure limits as in production, the
    cache in Redis, AWS IoT a fake that answers at once, unpaced. `front`: "nginx", deploy/nginx's server
    configuration terminating TLS in front of gunicorn on plain HTTP, as deployed; or "gunicorn",
    terminating TLS itself and trusting X-Forwarded-For from 127.0.0.1, where the benchmark's clients
    write the addresses they stand for. The database is SQLite unless `database_url` names another."""
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
        CVM_METRICS_TOKEN=BENCH_METRICS_TOKEN,  # required behind a proxy; wait_for_workers sends it
        # The fake has no quota: pacing vends to AWS IoT's would cap them at 10/s and hide what a flood costs.
        CVM_AWS_RATES="off",
        **({"DATABASE_URL": database_url} if database_url else {}),
    )
    fake = children.start(
        "fake AWS IoT", [PYTHON, "-m", "bench.fake_iot", "--port", str(fake_port), "--latency-ms", "0"], env=env
    )
    wait_for_port(fake_port, what="the fake AWS IoT", process=fake)
    tokens = devices_with_tokens(env, name.upper()[:3], devices, files=name)
    # gunicorn.conf.py's own defaults on two cores: 3 workers x 16 threads.
    if front == "gunicorn":
        url, ca = portal(children, env, workers=3, threads=16)
        gunicorn, proxy = children.running[-1][1], None
    else:
        url, ca = proxied_portal(children, env, workers=3, threads=16)
        gunicorn, proxy = children.running[-2][1], children.running[-1][1]
    return {"env": env, "url": url, "ca": ca, "tokens": tokens, "gunicorn": gunicorn, "proxy": proxy, "front": front}


def proxied_portal(children: Children, env: dict[str, str], *, workers: int, threads: int) -> tuple[str, Path]:
    """gunicorn on plain HTTP behind nginx running deploy/nginx's server configuration (compose's values)."""
    from scripts.local_tls import ensure_tls
    from scripts.nginx import NGINX, nginx_command, nginx_values, write_nginx_conf

    if NGINX is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    tls = ensure_tls(WORK / "tls")
    upstream, https_port = free_port(), free_port()
    command = gunicorn_command(f"127.0.0.1:{upstream}", workers=workers, threads=threads)
    # Straight at gunicorn: nginx's connections to it need not reach every worker soon.
    started_gunicorn(children, env, command, upstream, f"http://127.0.0.1:{upstream}", tls.ca_cert, workers)
    directory = Path(tempfile.mkdtemp(prefix="nginx-", dir=WORK))
    values = nginx_values(tls, https_port=https_port, http_port=free_port(), upstream=f"127.0.0.1:{upstream}")
    conf = write_nginx_conf(directory, values)
    proxy = children.start("nginx", nginx_command(directory, conf), env=env)
    wait_for_port(https_port, what="nginx", process=proxy)
    url = f"https://127.0.0.1:{https_port}"
    wait_until(lambda: session(tls.ca_cert).get(url + "/api/v1/health", timeout=5).ok, what="nginx", process=proxy)
    return url, tls.ca_cert


def front_cpu_seconds(portal: dict[str, Any]) -> float:
    """The server side's CPU time: gunicorn's master and workers, nginx's master and worker, and on
    PostgreSQL the database server's processes (the benchmark's is the only database at work)."""
    proxy = portal["proxy"]
    seconds = server_cpu_seconds(portal["gunicorn"]) + (server_cpu_seconds(proxy) if proxy is not None else 0.0)
    if portal["env"]["DATABASE_URL"].startswith("postgres"):
        seconds += postgres_cpu_seconds()
    return seconds


def postgres_cpu_seconds() -> float:
    """CPU time of every process named postgres (Linux /proc): the postmaster, with the backends it has
    reaped, and those still running."""
    total = 0.0
    for directory in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            name, fields = proc_stat(directory.name)
            if name == "postgres":
                total += proc_cpu_seconds(fields, reaped=True)
    return total


def attacker_address(portal: dict[str, Any], address: str) -> list[str]:
    """The flood client's options for one client address, as this portal's front sees addresses."""
    return ["--source" if portal["front"] == "nginx" else "--address", address]


def attacker_addresses(portal: dict[str, Any], count: int) -> list[str]:
    """The flood client's options for `count` client addresses."""
    return ["--sources" if portal["front"] == "nginx" else "--addresses", str(count)]


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
    """Legitimate devices vending one after another through one kept-alive connection, from FACTORY (the
    n-th vendor from the n-th address after it: behind nginx each line stays under the proxy's rate)."""

    def __init__(self, portal: dict[str, Any], serials: Any, lock: threading.Lock | None = None, n: int = 0) -> None:
        self.url, self.tokens, self.serials = portal["url"] + "/api/v1/certificates", portal["tokens"], serials
        base = ipaddress.ip_address(FACTORY[portal["front"]])
        self.address = str(base + n)
        self.session = session(portal["ca"], source=self.address if portal["front"] == "nginx" else None)
        self.headers = {} if portal["front"] == "nginx" else {"X-Forwarded-For": self.address}
        self.lock = lock or threading.Lock()  # vendors sharing one supply of devices share its lock

    def vend(self) -> float:
        with self.lock:
            serial = next(self.serials)
        started = time.perf_counter()
        response = self.session.post(
            self.url, json={"serial": serial, "token": self.tokens[serial]}, headers=self.headers,
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
    per second) while one device after another vends; rounds with and without the flood alternate. Behind
    nginx as deployed (what the target is judged on), then with gunicorn facing the clients alone."""
    results = {front: flood_behind(front, flood, rounds, rate) for front in FRONTS}
    return {
        "name": "flood",
        "figures": {
            f"{FRONT_LABELS[front]}: {name}": value for front in FRONTS for name, value in results[front].items()
        },
        "target": "10,000 requests from an over-limit address add at most a handful of rows; a vend beside them "
        "slows by at most 20 % (behind nginx, as deployed)",
        "met": results["nginx"]["audit rows the flood added"] <= 5
        and results["nginx"]["slowdown of a legitimate vend %"] <= 20,
    }


FRONT_LABELS = {"nginx": "behind nginx", "gunicorn": "gunicorn alone"}


def flood_behind(front: str, flood: int, rounds: int, rate: float) -> dict[str, Any]:
    started_load = load()
    with Children() as children:
        target = attacked_portal(children, f"flood-{front}", devices=8000, cache_db=12, front=front)
        attacker = attacker_address(target, ATTACKER[front])
        vendor = Vendor(target, iter(target["tokens"]))
        for _ in range(10):  # warm: imports, connections, the first queries of each worker
            vendor.vend()
        # Over the limit: CVM_FAILED_TOKENS_PER_ADDRESS refusals, then the lockout.
        warm = Attacker(target, "--rate", "200", "--count", "120", "--connections", "1", *attacker)
        over = warm.result()["statuses"]
        if over.get("403", 0) != 100 or over.get("429", 0) != 20:
            raise RuntimeError(f"the attacker did not reach its limit: {over}")
        rows_before = audit_rows(target["env"], ATTACKER[front])

        # The cost of one refused request to the server side (nginx included), measured alone.
        cpu_before = front_cpu_seconds(target)
        alone = Attacker(target, "--rate", str(rate), "--count", "2000", *attacker).result()
        cpu_per_request = (front_cpu_seconds(target) - cpu_before) / alone["sent"]

        quiet: list[float] = []
        during: list[float] = []
        answers: list[dict[str, int]] = []
        flood_seconds = 0.0
        for _ in range(rounds):
            # Without: as many vends as a flood round takes at the quiet pace.
            round_started = time.perf_counter()
            while time.perf_counter() - round_started < flood / rounds / rate:
                quiet.append(vendor.vend())
            running = Attacker(target, "--rate", str(rate), "--count", str(flood // rounds), *attacker)
            while running.running():
                during.append(vendor.vend())
            result = running.result()
            answers.append(result["statuses"])
            flood_seconds += result["seconds"]
        rows_added = audit_rows(target["env"], ATTACKER[front]) - rows_before
    statuses = merged(answers)
    return {
        "load average at start (1/5/15 min)": started_load,
        "flood requests": sum(statuses.values()),
        "answers": statuses,
        "audit rows the flood added": rows_added,
        "flood requests/s (offered / achieved)": f"{rate:.0f} / {sum(statuses.values()) / flood_seconds:.0f}",
        "server CPU ms per refused request": cpu_per_request * 1000,
        "vends without / with the flood": f"{len(quiet)} / {len(during)}",
        "vend median ms, without the flood": statistics.median(quiet) * 1000,
        "vend median ms, during the flood": statistics.median(during) * 1000,
        "vend p90 ms, without / during": f"{percentile(quiet, 0.9) * 1000:.1f} / {percentile(during, 0.9) * 1000:.1f}",
        "slowdown of a legitimate vend %": (statistics.median(during) / statistics.median(quiet) - 1) * 100,
        "load average at end (1/5/15 min)": load(),
    }


def audit_rows(env: dict[str, str], address: str) -> int:
    import sqlite3

    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        query = "SELECT COUNT(*) FROM provisioning_auditevent WHERE client_address = ?"
        return db.execute(query, (address,)).fetchone()[0]


def bench_spray(rate: float = 150.0, rounds: int = 3, seconds: float = 8.0, clients: int = 4) -> dict[str, Any]:
    """Issue 18: legitimate vends/s (CLIENTS devices at a time) with and without `rate` wrong tokens/s from
    thousands of addresses, each under its own limit, half against registered serials; rounds alternate.
    Behind nginx as deployed (what the target is judged on), on SQLite and on PostgreSQL (a database of its
    own, when one answers), then with gunicorn facing the clients alone."""
    results = {"nginx": spray_behind("nginx", rate, rounds, seconds, clients)}
    with pg_database() as (url, problem):
        results["nginx-pg"] = (
            spray_behind("nginx", rate, rounds, seconds, clients, database_url=url)
            if url
            else {"skipped": f"PostgreSQL is not reachable at 127.0.0.1:5432 ({problem})"}
        )
    results["gunicorn"] = spray_behind("gunicorn", rate, rounds, seconds, clients)
    labels = {**FRONT_LABELS, "nginx-pg": "behind nginx, PostgreSQL"}
    return {
        "name": "spray",
        "figures": {f"{labels[run]}: {name}": value for run in results for name, value in results[run].items()},
        "target": f"legitimate vends/s while {rate:.0f} wrong tokens/s arrive from many addresses: at most 20 % "
        "fewer (behind nginx, as deployed)",
        "met": results["nginx"]["legitimate vend throughput change %"] >= -20,
    }


def spray_behind(
    front: str, rate: float, rounds: int, seconds: float, clients: int, database_url: str = ""
) -> dict[str, Any]:
    started_load = load()
    with Children() as children:
        name = f"spray-{front}" + ("-pg" if database_url else "")
        target = attacked_portal(children, name, devices=12000, cache_db=11, front=front, database_url=database_url)
        serials = list(target["tokens"])
        guessed = WORK / "spray-targets.txt"
        guessed.write_text("\n".join(serials[-1000:]))  # registered devices the attacker guesses tokens for
        supply, lock = iter(serials[:-1000]), threading.Lock()
        vendors = [Vendor(target, supply, lock, n) for n in range(clients)]
        for vendor in vendors:
            vendor.vend()
        # Behind nginx each address is a connection of its own (ten requests, then the next address).
        flood_args = ["--rate", str(rate), *attacker_addresses(target, 20000), "--serials", str(guessed),
                      "--connections", "8"]  # fmt: skip

        cpu_before = front_cpu_seconds(target)
        alone = Attacker(target, *flood_args, "--seconds", "4").result()
        cpu_per_refusal = (front_cpu_seconds(target) - cpu_before) / alone["sent"]

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
    return {
        "load average at start (1/5/15 min)": started_load,
        "wrong tokens/s (offered / achieved)": f"{rate:.0f} / {statistics.mean(achieved):.0f}",
        "answers to the wrong tokens": merged(answers),
        "server CPU ms per wrong-token refusal": cpu_per_refusal * 1000,
        "vends/s without the flood, per round": ", ".join(f"{v:.1f}" for v in quiet),
        "vends/s during the flood, per round": ", ".join(f"{v:.1f}" for v in during),
        "legitimate vend throughput change %": (sum(during) / sum(quiet) - 1) * 100,
        "load average at end (1/5/15 min)": load(),
    }


# --- 2. stages: HTTPS through gunicorn, every AWS call 50 ms ----------------------------------------


def portal(children: Children, env: dict[str, str], *, workers: int, threads: int) -> tuple[str, Path]:
    from scripts.local_tls import ensure_tls

    tls = ensure_tls(WORK / "tls")
    port = free_port()
    command = gunicorn_command(f"127.0.0.1:{port}", tls=tls, workers=workers, threads=threads)
    url = f"https://127.0.0.1:{port}"
    started_gunicorn(children, env, command, port, url, tls.ca_cert, workers)
    return url, tls.ca_cert


def started_gunicorn(
    children: Children, env: dict[str, str], command: list[str], port: int, url: str, ca: Path, workers: int
) -> subprocess.Popen:
    """gunicorn started as the portal, once every one of its workers answers at `url`."""
    gunicorn = children.start("portal", command, env=env)
    wait_for_port(port, what="the portal", process=gunicorn)
    time.sleep(1)  # the master forks its workers after it listens
    wait_for_workers(url, ca, workers, master=gunicorn)
    return gunicorn


BENCH_METRICS_TOKEN = "bench-metrics-token-0123456789abcdef"  # noqa: S105 (a local benchmark's, on loopback)
METRICS_AUTHORIZATION = {"Authorization": f"Bearer {BENCH_METRICS_TOKEN}"}


def wait_for_workers(url: str, ca: Path, workers: int, timeout: float = 60.0, master: Any = None) -> None:
    """Until every gunicorn worker answers: the master listens long before its workers have loaded Django,
    and a benchmark that starts then measures the boot. Each worker's /metrics (loopback may read it)
    names its own process start time; one new connection at a time reaches any worker. Start times
    count in clock ticks (10 ms): workers forked within one tick look alike, so with the master's process
    at hand, as many distinct times as its workers have distinct start ticks is enough."""
    expected = workers
    if master is not None:
        with contextlib.suppress(OSError):
            pids = proc_children(master.pid)
            ticks = {proc_stat(pid)[1][19] for pid in pids}
            expected = min(workers, len(ticks)) if len(pids) == workers else workers
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(seen)} of {workers} workers answered within {timeout:.0f} s")
        text = session(ca).get(url + "/metrics", headers=METRICS_AUTHORIZATION, timeout=30).text
        seen.update(line for line in text.splitlines() if line.startswith("process_start_time_seconds"))


def session(ca: Path, source: str | None = None) -> Any:
    """A requests session trusting the benchmark's CA; with `source`, its connections leave from that
    loopback address."""
    import requests
    from requests.adapters import HTTPAdapter

    class FromSource(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs, source_address=(source, 0))

    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override `verify`
    s.verify = str(ca)
    if source:
        s.mount("https://", FromSource())
    return s


# The cheapest answer the portal gives over the same connection: DRF's 405 for a GET of the vend path. It
# passes gunicorn, TLS, HTTP and the whole middleware stack, and touches neither the database nor AWS.
ROUND_TRIP_PATH = "/api/v1/certificates"
AFTER_VEND_SECONDS = 0.05


def fake_calls(fake_url: str) -> dict[str, int]:
    import requests

    return requests.get(fake_url + "/stats", timeout=5).json()["calls"]


def calls_made(fake_url: str, work: Callable[[], object]) -> dict[str, int]:
    """The AWS IoT calls `work` makes, by API (nothing else may call the fake meanwhile)."""
    before = fake_calls(fake_url)
    work()
    after = fake_calls(fake_url)
    return {op: n - before.get(op, 0) for op, n in sorted(after.items()) if n - before.get(op, 0)}


def bench_stages(rounds: int = 150, warm_up: int = 10) -> dict[str, Any]:
    """Issue 18: the portal's own time per vend over HTTPS, as (a) - (b) - (c), measured interleaved:
    (a) a vend through gunicorn against a fake AWS IoT that adds 50 ms to every call, (b) the same AWS
    stages done by bare boto3 from this process against the same fake (`bench.bare_stages`), (c) one
    HTTPS round trip to the same gunicorn over the same kept-alive connection (ROUND_TRIP_PATH)."""
    from bench.bare_stages import BareStages, iot_client

    with Children() as children:
        fake_port = free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        env = fresh_env("stages", AWS_ENDPOINT_URL_IOT=fake_url, AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:9")
        fake = children.start(
            "fake AWS IoT", [PYTHON, "-m", "bench.fake_iot", "--port", str(fake_port), "--latency-ms", "50"], env=env
        )
        wait_for_port(fake_port, what="the fake AWS IoT", process=fake)
        tokens = iter(devices_with_tokens(env, "STG", rounds + warm_up + 2).items())
        url, ca = portal(children, env, workers=1, threads=8)
        s = session(ca)
        stages = BareStages(iot_client(fake_url))

        def vend() -> None:
            serial, token = next(tokens)
            response = s.post(url + "/api/v1/certificates", json={"serial": serial, "token": token}, timeout=30)
            if response.status_code != 201:
                raise RuntimeError(f"a vend was answered {response.status_code}: {response.text[:200]}")

        bare_serials = (f"STG-BARE-{i:06d}" for i in range(rounds + warm_up + 2))

        def bare() -> None:
            serial = next(bare_serials)
            # The thing's attributes as the portal gives them (serial and product), and its default policy.
            stages.run(thing_name=serial, attributes={"serial": serial, "product": "bench"},
                       policy_name="cvm-device-policy")  # fmt: skip

        def round_trip() -> None:
            response = s.get(url + ROUND_TRIP_PATH, timeout=30)
            if response.status_code != 405:
                raise RuntimeError(f"the round trip was answered {response.status_code}: {response.text[:200]}")

        pressure_before = io_pressure()
        try:
            vend()  # the portal's first vend looks up the data endpoint, which it then caches
            # (b) must stand for exactly the AWS calls a vend makes.
            vend_calls, bare_calls = calls_made(fake_url, vend), calls_made(fake_url, bare)
            if vend_calls != bare_calls:
                raise RuntimeError(f"the bare stages call {bare_calls}, a vend {vend_calls}")
            times: dict[str, list[float]] = {"vend": [], "bare": [], "round_trip": []}
            kinds = [("vend", vend), ("bare", bare), ("round_trip", round_trip)]
            for i in range(rounds + warm_up):
                # Each kind takes each place in the round in turn, so what precedes a request weighs on
                # all three alike, as does any other load on the machine.
                for name, work in kinds[i % 3 :] + kinds[: i % 3]:
                    t0 = time.perf_counter()
                    work()
                    elapsed = time.perf_counter() - t0
                    if i >= warm_up:
                        times[name].append(elapsed)
                    if name == "vend":
                        # After answering, the worker closes the request's database connection (on SQLite
                        # the last one checkpoints the WAL) before it reads the next request on the same
                        # connection: that is not the vend's time, and must not be a round trip's.
                        time.sleep(AFTER_VEND_SECONDS)
        finally:
            stages.close()
    a, b, c = (statistics.median(times[name]) * 1000 for name in ("vend", "bare", "round_trip"))
    own = a - b - c
    vends = times["vend"]
    return {
        "name": "stages",
        "figures": {
            "rounds (a, b and c each)": rounds,
            "AWS IoT calls per vend, by API (the same for b)": ", ".join(f"{op} {n}" for op, n in vend_calls.items()),
            "(a) vend over HTTPS, median ms": a,
            "(a) vend p90 ms": percentile(vends, 0.9) * 1000,
            "(a) vend p99 ms": percentile(vends, 0.99) * 1000,
            "(b) the same AWS stages by bare boto3, median ms": b,
            "(b) p90 ms": percentile(times["bare"], 0.9) * 1000,
            f"(c) one HTTPS round trip (GET {ROUND_TRIP_PATH}, 405), median ms": c,
            "(c) p90 ms": percentile(times["round_trip"], 0.9) * 1000,
            "portal's own time per vend, (a) - (b) - (c), ms": own,
            "I/O pressure, some % (10 / 60 / 300 s), before / after": f"{pressure_before}; {io_pressure()}",
        },
        "target": "portal's own time per vend over HTTPS (median vend - the same AWS stages by bare boto3 - one "
        "HTTPS round trip) <= 10 ms",
        "met": own <= 10,
    }


# --- 3. burst: 300 devices at once against a 15 TPS quota, a small server ------------------------------

BURST_APIS = ("CreateThing", "CreateKeysAndCertificate", "ListThingPrincipals", "AttachPolicy",
              "AttachThingPrincipal", "UpdateCertificate")  # fmt: skip


def bench_burst() -> dict[str, Any]:
    result = burst_run("burst")
    # The same burst where more vends are in flight than the queue holds: 64 threads, a 0.5 s queue. Vends
    # are turned away (503), and what each certificate costs per API shows whether any were turned away
    # half-way, having spent slots and undone a certificate on the APIs that are full.
    crowded = burst_run("burst-crowded", prefix="BSC", threads=32, queue_seconds=0.5)["figures"]
    for figure in (
        "whole-run share of quota",
        "answers",
        "AWS IoT calls per vend, by API",
        "AWS throttles (% of calls)",
    ):
        result["figures"][f"crowded (2 x 32 threads, 0.5 s queue): {figure}"] = crowded[figure]
    return result


def burst_run(
    name: str,
    *,
    prefix: str = "BST",
    devices: int = 300,
    quota: float = 15.0,
    clients: int = 100,
    workers: int = 2,
    threads: int = 8,
    queue_seconds: float = 2.0,
) -> dict[str, Any]:
    with Children() as children:
        import redis

        redis.Redis(db=14).flushdb()
        fake_port = free_port()
        # The governor is set a little under the account's quota (96 %), as it should be in production:
        # the two clocks never tick exactly together, and a call that lands early is throttled.
        rates = ",".join(f"{op}={quota * 0.96}" for op in ("default", *BURST_APIS, "DescribeEndpoint"))
        env = fresh_env(
            name,
            AWS_ENDPOINT_URL_IOT=f"http://127.0.0.1:{fake_port}",
            AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:9",
            CACHE_URL="redis://127.0.0.1:6379/14",
            CVM_AWS_RATES=rates,
            CVM_AWS_QUEUE_SECONDS=str(queue_seconds),
        )
        fake = children.start(
            "fake AWS IoT",
            [PYTHON, "-m", "bench.fake_iot", "--port", str(fake_port), "--latency-ms", "20", "--quota", str(quota)],
            env=env,
        )
        wait_for_port(fake_port, what="the fake AWS IoT", process=fake)
        tokens = devices_with_tokens(env, prefix, devices)
        url, ca = portal(children, env, workers=workers, threads=threads)
        statuses: dict[int, int] = {}
        retry_afters: list[float] = []
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
                retry_after = float(response.headers.get("Retry-After", "1"))
                with lock:
                    retry_afters.append(retry_after)
                time.sleep(min(10.0, retry_after))

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(device, tokens.items()))
        finished = sorted(done_at)
        elapsed = finished[-1] - started
        rate = len(finished) / elapsed
        # The steady middle of the run, between the 10th and the 90th percent of devices done.
        low, high = finished[len(finished) // 10], finished[(len(finished) * 9) // 10]
        sustained = (len(finished) * 0.8) / (high - low)
        stats = session(ca).get(f"http://127.0.0.1:{fake_port}/stats", timeout=5).json()
        calls = sum(stats["calls"].values())
        throttled = sum(stats["throttled"].values())
        share = rate / quota
        # The quota is per API: the API a vend calls most often sets the most vends a second can give.
        busiest = max(stats["calls"], key=lambda op: stats["calls"][op])
        per_vend = stats["calls"][busiest] / len(finished)
        return {
            "name": "burst",
            "figures": {
                "devices": devices,
                "provisioned": len(finished),
                "seconds, first request to last certificate": elapsed,
                "first certificate after s": finished[0] - started,
                "last 10 % of devices took s": finished[-1] - finished[(len(finished) * 9) // 10],
                "issuance per s, whole run": rate,
                "issuance per s, sustained (10 %-90 % of devices)": sustained,
                "quota per s (per API)": quota,
                "whole-run share of quota": share,
                "answers": dict(sorted(statuses.items())),
                "Retry-After given: count, median, max s": (
                    f"{len(retry_afters)}, {statistics.median(retry_afters) if retry_afters else 0:g}, "
                    f"{max(retry_afters, default=0):g}"
                ),
                "AWS IoT calls": calls,
                "AWS IoT calls per vend, by API": ", ".join(
                    f"{op} {n / len(finished):.2f}" for op, n in sorted(stats["calls"].items())
                ),
                "ceiling: quota / calls per vend of the busiest API": f"{quota / per_vend:.2f} vends/s ({busiest})",
                "AWS throttles (% of calls)": f"{throttled} ({100 * throttled / max(1, calls):.1f} %)",
            },
            "target": ">= 0.9 x quota over the whole run, <= 5 % throttled, every device provisioned, "
            "no error but 409/429/503",
            "met": len(finished) == devices
            and share >= 0.9
            and throttled <= 0.05 * calls
            and set(statuses) <= {201, 409, 429, 503},
        }


# --- 4. bulk: import and tokens for 100,000 serials ---------------------------------------------------


def bench_bulk(count: int = 100_000) -> dict[str, Any]:
    from bench.bulk import bench_bulk as bulk_on_both_databases

    return bulk_on_both_databases(fresh_env("bulk"), WORK, count)


# --- 5. admin: changelists with 100,000 devices and 1,000,000 audit events -----------------------------


def bench_admin(env: dict[str, str]) -> dict[str, Any]:
    # The test client logs in with a password alone; the second factor is the admin's, not what is measured.
    data = run_module("bench.admin_pages", {**env, "CVM_ADMIN_2FA": "false"})
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


# --- 7. pg_throughput: vends and audit appends from 1, 4 and 16 processes against PostgreSQL -------------

PG_SERVER = "host=127.0.0.1 port=5432 user=postgres"
# One per process: two benchmark runs at once must not drop each other's database.
PG_DATABASE = f"cvm_bench_{os.getpid()}"


@contextlib.contextmanager
def pg_database() -> Any:
    """A database of its own on the local PostgreSQL, dropped afterwards; None when none answers."""
    import psycopg

    try:
        admin = psycopg.connect(f"{PG_SERVER} dbname=postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        yield None, str(exc).strip().splitlines()[0]
        return
    with admin:
        admin.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {PG_DATABASE}")
        try:
            yield f"postgres://postgres@127.0.0.1:5432/{PG_DATABASE}", ""
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


def on_each_database(module: str, name: str, *args: str, figures: dict[str, Any]) -> Any:
    """Run a benchmark module on SQLite, then on a PostgreSQL database of its own (dropped afterwards);
    yields (database, what the module printed). Without PostgreSQL, says so in `figures`."""
    yield "SQLite", run_module(module, fresh_env(name), *args)
    with pg_database() as (url, problem):
        if url is None:
            figures["PostgreSQL"] = f"skipped: not reachable at 127.0.0.1:5432 ({problem})"
            return
        data = run_module(module, fresh_env(f"{name}_pg", DATABASE_URL=url), *args)
    yield "PostgreSQL", data


def bench_pg_throughput(seconds: float = 3.0, rounds: int = 2) -> dict[str, Any]:
    target = (
        "vends/s with the chain >= 0.9 x the same vends writing unchained rows (same run), at 1, 4 and 16 "
        "workers; time around an append (lock wait included) p99 <= 5 ms"
    )
    with pg_database() as (url, problem):
        if url is None:
            return {
                "name": "pg_throughput",
                "figures": {"skipped": f"PostgreSQL is not reachable at 127.0.0.1:5432 ({problem})"},
                "target": target,
                "met": False,
                "skipped": True,
            }
        env = fresh_env("pg", DATABASE_URL=url)
        data = run_module("bench.pg_throughput", env, str(seconds), str(rounds))
    figures: dict[str, Any] = {"PostgreSQL": data["postgresql"], "seconds per measurement": data["seconds"]}
    ratios = []
    for n in (1, 4, 16):
        chained = statistics.mean(data["vends"][f"chained {n}"])
        unchained = statistics.mean(data["vends"][f"unchained {n}"])
        ratios.append(chained / unchained)
        figures[f"vends/s, {n} workers: chained / unchained (ratio)"] = (
            f"{chained:.1f} / {unchained:.1f} ({chained / unchained:.2f})"
        )
        figures[f"vends/s, {n} workers, each round: chained; unchained"] = (
            f"{', '.join(f'{v:.1f}' for v in data['vends'][f'chained {n}'])}; "
            f"{', '.join(f'{v:.1f}' for v in data['vends'][f'unchained {n}'])}"
        )
        figures[f"s to chain what was pending after each chained round, {n} workers"] = ", ".join(
            f"{v:.2f}" for v in data["catch_up"][str(n)]
        )
    p99s = []
    for n in (1, 4, 16):
        a = data["appends"][str(n)]
        p99s.append(a["p99_ms"])
        figures[f"appends/s, {n} workers"] = a["rate"]
        figures[f"time around an append ms, {n} workers: p50 / p99 / max"] = (
            f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f} / {a['max_ms']:.1f}"
        )
        figures[f"s to chain what was pending after the appends, {n} workers"] = a["catch_up_s"]
        if plain := data["appends"].get(f"{n} unchained"):  # the same appends as plain INSERTs, no sequencer
            figures[f"time around a plain INSERT of the same row, no chain, ms, {n} workers: p50 / p99 / max"] = (
                f"{plain['p50_ms']:.2f} / {plain['p99_ms']:.2f} / {plain['max_ms']:.1f}"
            )
    return {
        "name": "pg_throughput",
        "figures": figures,
        "target": target,
        "met": min(ratios) >= 0.9 and max(p99s) <= 5,
    }


def bench_audit_chain(events: int = 100_000, writers: int = 4, seconds: float = 10.0) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    lags: dict[str, float] = {}
    args = (str(events), str(writers), str(seconds))
    for database, data in on_each_database("bench.audit_chain", "audit_chain", *args, figures=figures):
        rate, lag = data["rate"], data["lag"]
        lags[database] = lag["lag_p99_s"]
        figures[f"{database}: {events:,} events chained, s (events/s)"] = (
            f"{rate['chain_s']:.2f} ({rate['chained_per_s']:,.0f})"
        )
        figures[f"{database}: {writers} writers, events appended/s"] = lag["appended_per_s"]
        figures[f"{database}: age of the oldest unchained event, s: median / p99 / max"] = (
            f"{lag['lag_median_s']:.2f} / {lag['lag_p99_s']:.2f} / {lag['lag_max_s']:.2f}"
        )
        figures[f"{database}: left unchained; verify_audit problems"] = (
            f"{lag['left_unchained']}; {lag['verify_problems']}"
        )
    return {
        "name": "audit_chain",
        "figures": figures,
        "target": "on PostgreSQL, every event chained within a second of its commit (p99 of the oldest "
        "unchained event's age <= 1 s) while writers append at full speed; nothing left unchained; the chain "
        "verifies",
        "met": lags.get("PostgreSQL", 99.0) <= 1.0,
    }


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


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def io_pressure() -> str:
    """The share of the last 10 / 60 / 300 s in which some task waited for I/O (Linux PSI), in %.

    The load average hides it, and a benchmark that commits to SQLite waits on the disk other work shares."""
    try:
        some = Path("/proc/pressure/io").read_text().splitlines()[0].split()[1:4]
    except (OSError, IndexError):
        return "unknown"
    return " / ".join(field.split("=")[1] for field in some)


def report(results: list[dict[str, Any]], loads: tuple[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}.",
        f"Load average (1 / 5 / 15 min) when the run started: {loads[0]}; when it ended: {loads[1]}. Other work on "
        "the machine shares its two cores; each benchmark records its own below.",
        "Reproduce: `make bench` (all) or `.venv/bin/python -m bench.run NAME` (one; names below).",
        "",
        "| benchmark | target | met |",
        "|---|---|---|",
    ]
    lines += [summary_row(r) for r in results]
    for r in results:
        lines += ["", *section(r)]
    # Figures of earlier code cannot be measured again from this tree: they are kept by hand, with the
    # conditions they were measured under.
    history = ROOT / "bench" / "before_after.md"
    if history.exists():
        lines += ["", history.read_text().rstrip()]
    return "\n".join(lines) + "\n"


DESCRIPTIONS = {
    "overhead": "A vend through the whole Django/DRF stack (middleware, validation, claim, two transactions "
    "with audit and outbox rows, on SQLite) with an in-process AWS fake that answers at once, against a bare DRF "
    "endpoint with the same middleware that parses the same body and answers 201. Both in one process, "
    "interleaved, through Django's test client.",
    "stages": "The portal's own time per vend over HTTPS (issue 18): (a) sequential vends over HTTPS through "
    "gunicorn (1 worker, 8 threads) against a fake AWS IoT that adds 50 ms to every call; (b) the same AWS IoT "
    "calls a vend makes, in the same three dependent stages and with the same concurrency within a stage (create "
    "the thing, the certificate and list the thing's principals; attach the policy and the thing; activate), "
    "done by bare boto3 from the benchmark's process against the same fake (`bench/bare_stages.py`; checked "
    "against the calls a vend makes); (c) one HTTPS round trip to the same gunicorn over the same kept-alive "
    "connection, a GET of the vend path, which DRF answers 405 without the database or AWS. Interleaved request "
    "by request, each kind taking each place in a round in turn, so other load on the machine weighs on all "
    "three alike; 50 ms pass after each vend, so the work the worker does after answering one (closing its "
    "database connection) delays nothing measured. Portal time = median (a) - median (b) - median (c).",
    "burst": "300 devices at once (100 concurrent clients honouring `Retry-After`) through gunicorn (2 workers x 8 "
    "threads, started and every worker answering before the first device) against a fake AWS IoT that allows 15 "
    "calls/s per API and throttles beyond (20 ms per call). The governor shares a 14.4/s schedule per API (96 % "
    "of the quota) through Redis. Whole run = devices / (first request to last certificate). Then the same "
    "burst crowded: 2 workers x 32 threads and `CVM_AWS_QUEUE_SECONDS=0.5`, so more vends are in flight than "
    "the governor's queue holds and some are turned away.",
    "bulk": "`import_serials` of 100,000 serials, then `issue_tokens --all-registered` for all of them, each a "
    "separate process (start-up included), on SQLite and then PostgreSQL (127.0.0.1:5432, a database of its "
    "own); peak resident memory of that process; after each command, how long the audit sequencer "
    "(`audit_chain_pending`) takes to chain the events it wrote.",
    "admin": "Server time (median of 5, in-process test client) and query count of admin changelists as a "
    "superuser, with 100,000 devices, 100,000 certificates and 1,000,000 audit events in SQLite.",
    "vend": "The vend service (`certificate_vend`) called in-process, no HTTP, with AWS answering at once, on "
    "SQLite and on PostgreSQL (a database of its own): the claim, the certificate and both transactions with "
    "their audit events and outbox rows; a wrong token and an unknown serial timed beside it, interleaved "
    "(they must cost the same).",
    "flood": "An address goes over its failed-token limit (100 per hour), then sends 10,000 more wrong tokens "
    "at 500/s from a process of its own (4 kept-alive connections) while legitimate devices vend one after "
    "another from another process, through gunicorn (the project's configuration: 3 workers x 16 threads "
    "here), the cache in Redis, AWS IoT a fake answering at once, unpaced. Twice: behind nginx running "
    "deploy/nginx's server configuration with compose's values (TLS at nginx, 100 device calls/s per address "
    "after a burst of 200), as deployed, where the addresses are the clients' own loopback source "
    "addresses; then with gunicorn terminating TLS itself and trusting X-Forwarded-For from 127.0.0.1. "
    "Four rounds without the flood alternate with four rounds of 2,500 flood requests each; the server "
    "side's CPU (gunicorn and nginx) per refused request is measured alone, on 2,000 of them.",
    "spray": "Four legitimate devices at a time (each line from an address of its own) vend through gunicorn "
    "(as in `flood`: behind nginx on SQLite, behind nginx on PostgreSQL, and gunicorn alone on SQLite) for 8 s; "
    "in alternate rounds a process of its own sends "
    "150 wrong tokens/s from 20,000 addresses (each far under its limit; behind nginx each address is a TLS "
    "connection of its own, ten requests long), half for 1,000 registered serials and half for unknown "
    "ones, so every one is a full refusal: looked up, counted and audited. Three rounds each; the server "
    "side's CPU per refusal (gunicorn, nginx and, on PostgreSQL, the database server) is measured alone, over "
    "4 s.",
    "mirror": "`sync_dynamodb --once` draining 5,000 changes into the local AWS emulator (moto server) over "
    "HTTP, 16 writes in flight; the same drain with DynamoDB replaced by an in-process no-op (what the portal "
    "itself can do); then the lag from commit to DynamoDB while 100 devices vend with a worker running.",
    "audit_chain": "The audit sequencer on SQLite and on PostgreSQL (a database of its own): 100,000 events "
    "written unchained in one transaction (an import's worth), then chained by `audit_chain_pending`; then 4 "
    "writer threads each appending one event per transaction, as a vend does, for 10 s while the worker's "
    "sequencer (`audit_follow`, four rounds a second) runs beside them, the age of the oldest unchained event "
    "sampled every 50 ms; at the end nothing may be left unchained and `audit_verify` must find nothing.",
    "pg_throughput": "Against PostgreSQL on 127.0.0.1:5432 (a database of its own, `cvm_bench_PID`, dropped "
    "afterwards; skipped when none answers): vends through the vend service with AWS answering at once, and "
    "audit appends (`audit_append`, each in its own transaction), from 1, 4 and 16 worker processes started "
    "together (processes, each with its own connection, so they contend for the database and the cores, not "
    "for Python's interpreter lock), each working for 3 s. The vends run twice in interleaved rounds (chained, "
    "unchained, chained, unchained): as the portal writes them, with the worker's audit sequencer running in "
    "a process of its own beside them, and with `audit_append_many` replaced by a plain insert of the same "
    "rows and the same HMAC work into a table of their own shaped like the audit log (its indexes too), and no "
    "sequencer at all. The appends run both ways too. The time around an append is taken inside its "
    "transaction, so it includes any wait for a lock; after each chained round, the seconds the sequencer "
    "took to chain what was still pending (the run fails if anything is left a minute later).",
}
NOTES: dict[str, str] = {
    "overhead": "Why the ratio is above 2x: the bare endpoint touches no database, while a vend runs ten "
    "statements in two transactions, each committed (the device and the failure window; the claim with its "
    "audit event and outbox row; the certificate ids AWS may hold; the certificate, the state change, its "
    "audit event and outbox row). Those two durable commits are what the guarantees cost. The absolute "
    "figure, not the ratio, is what a device sees, and it is small beside AWS IoT's own latency (see `stages`).",
    "vend": (
        "Met on a quiet machine (AMD EPYC, load about 1, 2026-11-29 23:22 UTC): 1.35 ms on SQLite and 3.63 ms "
        "on PostgreSQL. On a slower Intel Xeon at load 1.5 to 1.7 the same code took 3.73 and 7.85 ms, and an "
        "A/B of the code before and after that evening's changes, alternated at load 2.7, gave 3.87 / 3.02 ms "
        "before and 3.18 / 3.66 ms after: the machine, not the code. Profiled, most of a PostgreSQL vend is "
        "psycopg waiting for the server across its round trips (ten statements, two BEGIN/COMMIT pairs; an "
        "INSERT with its COMMIT alone took 0.32 ms and a `SELECT 1` 0.13 ms on the Xeon), the rest Python."
    ),
    "stages": "The three AWS stages take more than 3 x 50 ms even by bare boto3 (b): botocore spends about 1 ms "
    "of CPU building, signing and parsing each request, and the fake answers over HTTP. Through the portal they "
    "take as long (each stage timed inside the worker: 55.9, 54.6 and 52.9 ms, against 56.9, 54.8 and 52.9 by "
    "bare boto3; the quota governor about 0.03 ms a call, the data endpoint looked up once per process), so the "
    "portal's own time is its database work and Django/DRF: the vend's statements and its two commits, the "
    "service's own Python (about 2.5 ms) and Django and DRF around the view (2.6 ms, part of which the round "
    "trip (c) carries too). The figure depends on the disk: while other processes were committing to SQLite "
    "files the claim's commit took 6.4 ms instead of 0.9. Before each worker thread kept its database "
    "connection, a request opened one (1.5 ms) and closed it after answering (1.7 ms: as the last connection "
    "to the file it checkpointed and deleted the WAL), and the figure was 8.5 to 21 ms depending on the disk; "
    "with connections kept, measured alternately in the worker, 5.7 to 9.0 ms.",
    "burst": "The ceiling: a vend calls each of its six APIs once (CreateThing, CreateKeysAndCertificate, "
    "ListThingPrincipals, AttachPolicy, AttachThingPrincipal, UpdateCertificate; DescribeEndpoint once per "
    "process), and the quota is per API, so no schedule issues more than 15 vends/s for long: 1.0 x quota. Over "
    "a whole run of 300 the first second's burst adds a little and three dependent AWS round trips take a "
    "little: with the governor at 96 %, (300 - 14.4) / 14.4 s + ~0.1 s = 19.9 s, about 1.0 x quota. Where the "
    "whole run was lost, measured on 2026-11-29 on this machine, interleaved, at load averages 4.5 to 10: the "
    "start. The benchmark began as soon as gunicorn's master listened, while its workers were still loading "
    "Django (1 to 4 s), and each worker's first vends then waited for the API's imports, botocore's service "
    "models and the Redis client (1 to 2.5 s); the first certificate came after 3.5 to 4.7 s and the whole run "
    "was 0.69 to 0.78 x quota (0 answers but 201, so no `Retry-After` and no governor refusal was involved: 16 "
    "threads never queue more than the 2 s the governor allows). Waiting for every worker took it to 0.84 "
    "(0.58 at load 10); workers that warm up before their first request (`cvm_portal/wsgi.py`) to 0.97 and 0.88 "
    "(load 6 and 10), the first certificate after 0.7 to 0.9 s. What is left is CPU: at a load average of 10 "
    "or more on two cores the portal cannot keep 14.4 vends/s in flight, and the sustained rate falls below "
    "the governor's. Crowded, before vends were admitted up front (115 to 252 answers 503, at load 10 to 16): "
    "vends turned away half-way made each certificate cost 1.12 to 1.20 calls of CreateKeysAndCertificate, "
    "CreateThing, ListThingPrincipals and UpdateCertificate (undoing a certificate calls UpdateCertificate too), "
    "and the whole run was 0.75 x quota. Now a vend is turned away before its claim, and each certificate costs "
    "1.00 to 1.01 calls per API.",
    "bulk": (
        "Met on a quiet machine (AMD EPYC, load about 0.5, 2026-11-29 23:27 UTC): 2.4 s and 2.8 s on SQLite, "
        "3.1 s and 4.4 s on PostgreSQL, process start included. Both commands write one row per device to "
        "three tables (device, audit event, outbox) in one transaction. On PostgreSQL the rows go in by "
        "`COPY`, made as the stream takes them, so the server writes one batch while the next is made; on "
        "SQLite by INSERTs of about 900 rows each, handed to sqlite3 itself (`executemany` ran its statement "
        "once per row and opened a cursor on every index each time; Django's cursor ran a regular expression "
        "over each statement's text). A token run is one conditional UPDATE … FROM a temporary table of the "
        "new digests (expiry and issue time are parameters), returning what the outbox items are made of. "
        "Each audit event still carries its writer's MAC, but the events of a run share one keyed HMAC and "
        "the JSON around their serial; the outbox items share one encoded template per group of alike "
        "devices. Neither command runs Django's system checks (they imported the whole URL configuration). "
        "Migration 0017 dropped the device's `product_id` index (`device_product_state` starts with the same "
        "column) and made four others partial (`IS NOT NULL`): rows without an import batch, a certificate or "
        "a client address add no entry to them. The audit events go in unchained; the worker's sequencer "
        "chains them afterwards (the time it takes is shown). Where the time goes, measured on a slower "
        "2-core Intel Xeon at 2.1 GHz whose speed varied by up to 1.7x from one minute to the next: on "
        "PostgreSQL, the server's own work, read from its backend's CPU time: 4.5 to 5.9 s for the import "
        "(the device COPY 1.1 to 1.7 s, the device rows' 100,000 foreign-key checks at commit 0.7 to 0.9 s, "
        "the audit COPY 1.3 to 1.4 s, the outbox COPY 1.1 to 1.4 s) and 5.2 to 7.1 s for the token run (the "
        "UPDATE 1.7 to 2.6 s: a new version of every device row with an entry in each of its six indexes and "
        "77 MB of WAL, never a HOT update since the state is indexed; the audit COPY 1.1 to 1.8 s; the outbox "
        "COPY 1.0 to 1.8 s). To that the command adds what only it does: start-up 0.7 to 0.9 s (Django, DRF, "
        "boto3 and psycopg, imported by the app registry; 0.1 to 0.2 s of it compiling the project's modules "
        "where no bytecode is written), the CSV's parsing 0.4 s, the tokens and their file 0.4 s. On SQLite "
        "all of it runs in the process: 3.6 to 5.0 s of CPU for the import and 4.2 to 4.9 s for the token "
        "run, of which SQLite's own work on the rows and their indexes 1.5 to 2 s and the commit's fsync 0.3 "
        "s. On that Xeon, at load 1.5 to 3.8, the PostgreSQL token run stayed over 5 s (7.1 to 10.0 s), the "
        "server's own work being most of it; the same SQLite run alternated between the code before this bulk "
        "work and after it (load 1.5 to 2.3) took 10.9 and 9.7 s (import) and 10.9 and 11.2 s (tokens) "
        "before, 6.9 and 6.5 s and 6.5 and 7.8 s after."
    ),
    "mirror": "The emulator is the limit here, not the portal: measured directly, moto's server accepts "
    "about 115 PutItem calls/s from one client and about 170/s from 16, conditional or not, on this "
    "machine. The portal's own side of the drain is the no-op figure. The lag while vending is the backlog "
    "the emulator's pace leaves behind; against DynamoDB, which takes thousands of writes per second, it "
    "is the worker's half-second poll.",
    "flood": (
        "Met behind nginx, as deployed, in both runs on a quiet machine (AMD EPYC, 2026-11-29): +8.1 % at "
        "23:17 UTC (load 0.7 to 1.6) and +17.0 % in the whole run (load 1.2 to 2.0); 0 rows written. nginx "
        "answers the flood beyond 100 calls/s (compose's CVM_DEVICE_CALLS_PER_SECOND) itself, and the server "
        "side spends 0.3 ms of CPU per flood request, nginx included; what is left is the 100/s nginx lets "
        "through, each answered 429 by the portal's lockout middleware, and the flood client itself, a Python "
        "process on the same two cores. With gunicorn facing the clients alone every one of the 500/s reaches "
        "Python (0.6 ms of CPU each: TLS, HTTP, WSGI and the lockout), and the vend slows by +34 % to +54 %. "
        "On a slower Intel Xeon, with other work on the machine (load 0.5 to 3.8), the same runs behind nginx "
        "gave +20 % to +37 %."
    ),
    "spray": (
        "Not met. Behind nginx on SQLite: -30 %, -31 % and -28 % in three runs on a quiet machine (AMD EPYC, "
        "2026-11-29 23:20 to 00:10 UTC, load 1.6 to 4.2); behind nginx on PostgreSQL -26 % (and -39 % in a "
        "trial run minutes before); with gunicorn alone -24 %, -35 % and -13 %. Run-to-run spread is wide: "
        "the vends/s without the spray moved by a fifth between rounds of one run. A wrong token from a new "
        "address is a real refusal: it reads the device and the failure counts, writes its audit event (a "
        "plain INSERT, no lock shared with other writers) and commits, and it passes Django's middleware, "
        "DRF, the request log and three Redis round trips. It costs the server 2.0 to 2.7 ms of CPU on "
        "SQLite, nginx included, and 3.4 ms on PostgreSQL with the database server's own share (7.9 ms before "
        "this work, on a slower machine under load: Django's Redis backend built a new client for every cache "
        "call, SQLite opened a connection per request, the failure window walked every refusal of the past "
        "hour, and the client address was worked out four times). Where that goes, through Django's test "
        "client in one process (1.5 to 1.7 ms a refusal on SQLite): the refusal itself 0.47 ms (`vend`), "
        "three Redis round trips about 0.2 ms, the admin's middleware after the lockout check 0.19 ms "
        "(measured by leaving it out), the rest Django, DRF and the serializer; gunicorn and nginx add the "
        "HTTP and TLS around it. The floor at that cost: 150 refusals/s x 2 to 3.4 ms is 0.3 to 0.5 of a "
        "core, 15 to 25 % of this two-core machine, before the attacker's own process, and here the vends "
        "keep both cores busy (load average 2 to 5.7 during the runs), so that share comes out of their "
        "throughput; a reliable -20 % needs a refusal at about half its cost, which means answering device "
        "calls outside Django's request stack. That was not built: it would be a second request path for the "
        "security checks to be right in."
    ),
    "audit_chain": "SQLite serialises every writer on one file lock, and its lock is not fair: with four "
    "threads committing back to back in the same process, the sequencer's round waits its turn behind them, "
    "so the lag there is seconds, not a fraction of one. SQLite is the database of `make run` and small "
    "installations; production runs PostgreSQL, where writers never wait for the sequencer nor it for them "
    "but for its own rows.",
    "pg_throughput": "Writers no longer lock anything shared: an append is a plain INSERT, and the one lock on "
    "the chain's head is the sequencer's, in the worker. What the chain costs is the sequencer's own work (a "
    "read of the pending events, an HMAC each, one UPDATE per thousand) on the same two cores and the same "
    "database; it chained what was pending within the catch-up time shown. Not met: the append p99 at 16 "
    "workers. The floor is beside it, measured in the same run: the same row written as a plain INSERT into a "
    "copy of the table, with no chain and no sequencer, has about the same p99 at 16 workers. No lock is "
    "involved; 16 processes take turns on two cores, and an append whose process loses its core waits for "
    "it. Vends/s peak at 4 workers for the same reason. What one PostgreSQL sustains on more cores, worked "
    "out from these figures, is in the README (Capacity). Before 2026-11-29 23:50 this benchmark wrote its "
    "unchained rows into the audit log itself with numbers of their own; the "
    "sequencer, rightly, refused to build on a head that no longer matched the newest event, stopped chaining "
    "after the first unchained round, and every later chained round ran without it (catch-up shown as 60 s).",
}

BENCHES: dict[str, Callable[..., dict[str, Any]]] = {
    "overhead": bench_overhead,
    "stages": bench_stages,
    "burst": bench_burst,
    "bulk": bench_bulk,
    "mirror": bench_mirror,
    "flood": bench_flood,
    "vend": bench_vend,
    "spray": bench_spray,
    "pg_throughput": bench_pg_throughput,
    "audit_chain": bench_audit_chain,
}


def section(result: dict[str, Any]) -> list[str]:
    """A benchmark's part of BENCHMARKS.md: its heading, description, figures and note."""
    lines = [f"## `{result['name']}`", "", DESCRIPTIONS[result["name"]], "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in result["figures"].items()]
    if result["name"] in NOTES:
        lines += ["", NOTES[result["name"]]]
    return lines


def summary_row(result: dict[str, Any]) -> str:
    met = "skipped" if result.get("skipped") else "yes" if result["met"] else "**no**"
    return f"| `{result['name']}` | {result['target']} | {met} |"


def updated(document: str, results: list[dict[str, Any]], loads: tuple[str, str]) -> str:
    """BENCHMARKS.md with the sections and summary rows of `results` replaced (appended when new) and one
    line under the header saying which were measured again, when and at what load; the rest is kept."""
    lines = document.rstrip("\n").split("\n")
    for result in results:
        heading = f"## `{result['name']}`"
        row = f"| `{result['name']}` |"
        rows = [i for i, line in enumerate(lines) if line.startswith(row)]
        if rows:
            lines[rows[0]] = summary_row(result)
        else:  # a new benchmark: its row after the table's last one
            last = max(i for i, line in enumerate(lines) if line.startswith("| `"))
            lines.insert(last + 1, summary_row(result))
        if heading in lines:
            start = lines.index(heading)
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            lines[start:end] = [*section(result), ""]
        else:
            before = next((i for i, line in enumerate(lines) if line.startswith("## Before and after")), len(lines))
            lines[before:before] = [*section(result), ""]
    names = ", ".join(f"`{r['name']}`" for r in results)
    note = (
        f"{names} measured again on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC "
        f"on {machine()} (load average {loads[0]} at the start, {loads[1]} at the end); the sections of the "
        "others are as before."
    )
    table = next(i for i, line in enumerate(lines) if line.startswith("| benchmark |"))
    lines[table - 1 : table - 1] = [note]
    return "\n".join(lines) + "\n"


ALL = (
    "overhead", "vend", "stages", "burst", "bulk", "admin", "mirror", "flood", "spray", "pg_throughput", "audit_chain",
)  # fmt: skip


class OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block before the error; bad input gets one line, as the
        # project's commands give it, and `--help` still shows the usage.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = OneLineErrors(
        prog="python -m bench.run",
        description="Run every benchmark and write BENCHMARKS.md, or run the named ones and print their figures.",
        epilog=f"names: {', '.join(ALL)}",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument(
        "--update", action="store_true", help="also replace their sections and summary rows in BENCHMARKS.md"
    )
    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in ALL]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; names: {', '.join(ALL)}")
    if args.update and not args.names:
        parser.error("--update needs the names of the benchmarks to measure again")
    args.names = list(dict.fromkeys(args.names))  # each once, in the order given
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(sys.argv[1:] if argv is None else argv)
    update, wanted = args.update, args.names or list(ALL)
    results = []
    bulk_env = None
    run_started = load_average()
    WORK.mkdir(mode=0o700)
    try:
        for name in wanted:
            print(f"== {name}", flush=True)
            started = load_average()
            if name == "admin":
                if bulk_env is None:
                    bulk = bench_bulk()
                    bulk_env = bulk.pop("env")
                result = bench_admin(bulk_env)
            else:
                result = BENCHES[name]()
                if name == "bulk":
                    bulk_env = result.pop("env")
            result["figures"]["load average at start (1 / 5 / 15 min)"] = started
            result["figures"]["load average at end (1 / 5 / 15 min)"] = load_average()
            print(json.dumps(result, default=str, indent=1), flush=True)
            results.append(result)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    document = ROOT / "BENCHMARKS.md"
    if set(wanted) == set(DESCRIPTIONS):
        document.write_text(report(results, (run_started, load_average())))
        print("wrote BENCHMARKS.md")
    elif update:
        document.write_text(updated(document.read_text(), results, (run_started, load_average())))
        print(f"updated BENCHMARKS.md: {', '.join(wanted)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
