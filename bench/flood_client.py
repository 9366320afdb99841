"""Wrong tokens at a steady rate, from a process of its own: the attacker of the `flood` and `spray` benchmarks.

Kept-alive TLS connections, one thread each, requests written by hand: the client spends as little CPU as
it can, so what the machine loses to the flood is the portal's share, not this program's. Each request
carries a wrong token for a serial from SERIALS (or a made-up one) and, when the benchmark trusts the
loopback address as a proxy, an X-Forwarded-For address: always ADDRESS, or one of ADDRESSES many.

    python -m bench.flood_client --url https://127.0.0.1:PORT --ca CA --rate 150 --seconds 10 \
        [--count N] [--connections 4] [--address 198.51.100.66 | --addresses 5000] [--serials FILE]
        [--source 127.66.0.1 | --sources 5000 [--per-connection 10]]

Behind nginx, which writes X-Forwarded-For itself, `--source`/`--sources` give the address instead: the
connections' own source addresses, from 127.0.0.0/8 (all loopback on Linux).

Prints `started` when its connections are open, then one JSON line when done: answers by status,
requests sent, seconds, connection errors.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


class Connection:
    """One kept-alive HTTPS connection; `request` writes raw bytes and returns the answer's status."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, source: str = "") -> None:
        raw = socket.create_connection((host, port), timeout=30, source_address=(source, 0) if source else None)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=host) if context else raw
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def request(self, data: bytes) -> tuple[int, bool]:
        """(status, whether the server keeps the connection open)."""
        self.sock.sendall(data)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if b"content-length" not in headers:
            raise RuntimeError(f"an answer without Content-Length: {head!r}")
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            self._fill()
        self.buffer = self.buffer[length:]
        return status, headers.get(b"connection", b"").lower() != b"close"

    def close(self) -> None:
        self.sock.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", default="", help="the CA of an https:// URL")
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--count", type=int, default=0, help="stop after this many requests (0: no limit)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--address", default="", help="one client address for every request")
    parser.add_argument("--addresses", type=int, default=0, help="this many distinct client addresses")
    parser.add_argument("--serials", default="", help="a file of known serials, one a line")
    # Behind nginx the proxy writes X-Forwarded-For itself: the address is the connection's own source.
    parser.add_argument("--source", default="", help="one loopback source address for every connection")
    parser.add_argument("--sources", type=int, default=0, help="connections from this many loopback addresses")
    parser.add_argument("--per-connection", type=int, default=10, help="requests per connection with --sources")
    args = parser.parse_args()

    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    context = ssl.create_default_context(cafile=args.ca) if url.scheme == "https" else None
    known = Path(args.serials).read_text().split() if args.serials else []
    rng = random.Random(7)
    # Addresses from 100.64.0.0/10 (shared address space): nobody the benchmark knows, many of them.
    pool = [f"100.{64 + i // 65536 % 64}.{i // 256 % 256}.{i % 256}" for i in range(args.addresses)]
    # Source addresses from 127.100.0.0/14: all loopback, so the client can bind them on Linux.
    sources = [f"127.{100 + i // 65536 % 4}.{i // 256 % 256}.{i % 256 or 1}" for i in range(args.sources)]
    next_source = iter(range(10**9))

    def request_bytes(i: int) -> bytes:
        serial = known[i % len(known)] if known and i % 2 == 0 else f"NOBODY-{rng.randrange(10**9):09d}"
        body = json.dumps({"serial": serial, "token": f"wrong-{rng.randrange(10**12):012d}-xxxxxxxxxx"}).encode()
        address = args.address or (pool[rng.randrange(len(pool))] if pool else "")
        forwarded = f"X-Forwarded-For: {address}\r\n" if address else ""
        return (
            f"POST /api/v1/certificates HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{forwarded}\r\n"
        ).encode() + body

    total = args.count or 10**9
    prepared = [request_bytes(i) for i in range(min(total, int(args.rate * args.seconds) + 1))]

    def connect() -> Connection:
        source = sources[next(next_source) % len(sources)] if sources else args.source
        return Connection(host, port, context, source)

    connections = [connect() for _ in range(args.connections)]
    statuses: dict[int, int] = {}
    errors = [0]
    lock = threading.Lock()
    print("started", flush=True)
    started = time.perf_counter()
    deadline = started + args.seconds

    def send(worker: int) -> None:
        connection = connections[worker]
        seen: dict[int, int] = {}
        sent_here = 0
        for i in range(worker, len(prepared), args.connections):
            if sources and sent_here == args.per_connection:  # the next address
                connection.close()
                connection, sent_here = connect(), 0
            sent_here += 1
            due = started + i / args.rate
            now = time.perf_counter()
            if due >= deadline:
                break
            if due > now:
                time.sleep(due - now)
            try:
                status, keep = connection.request(prepared[i])
            except (OSError, ValueError):
                # A worker restarting (gunicorn's max_requests) closes its connections: open another.
                with lock:
                    errors[0] += 1
                connection.close()
                connection = connect()
                continue
            seen[status] = seen.get(status, 0) + 1
            if not keep:
                connection.close()
                connection = connect()
        connection.close()
        with lock:
            for status, n in seen.items():
                statuses[status] = statuses.get(status, 0) + n

    failures: list[BaseException] = []

    def sender(worker: int) -> None:
        try:
            send(worker)
        except BaseException as exc:
            failures.append(exc)
            raise

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        return 1
    seconds = time.perf_counter() - started
    sent = sum(statuses.values())
    print(json.dumps({"statuses": statuses, "sent": sent, "seconds": seconds, "errors": errors[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
