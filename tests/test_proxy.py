"""The portal behind deploy/nginx: TLS at the proxy, gunicorn on plain HTTP behind it, the emulator for AWS.

The proxy runs the very server configuration of deploy/nginx/templates (rendered as the nginx image
renders it), inside a minimal main nginx.conf of the test's own. Clients come from different loopback
addresses (127.0.0.0/8 is all local), so per-address limits can be told apart. Needs Debian's nginx
(`apt-get install nginx`; .ci/run installs it); skipped where it is missing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.local_tls import ensure_tls
from scripts.nginx import NGINX, nginx_command, nginx_values, write_nginx_conf
from scripts.processes import PYTHON, ROOT, Children, emulator_command, free_port, manage, wait_for_port, wait_until

from .conftest import make_csr

pytestmark = pytest.mark.e2e

NO_NGINX = "nginx is not installed (apt-get install nginx; .ci/run does)"
if NGINX is None and os.environ.get("CVM_REQUIRE_NGINX"):
    raise RuntimeError(f"CVM_REQUIRE_NGINX is set but {NO_NGINX}")
needs_nginx = pytest.mark.skipif(NGINX is None, reason=NO_NGINX)
REQUESTS_PER_ADDRESS = 10
CONNECTIONS_PER_ADDRESS = 64  # deploy/nginx: limit_conn cvm_per_address
DEVICE_CALLS_PER_SECOND, DEVICE_CALLS_BURST = 20, 40  # deploy/compose.yaml gives 100 and 200
HEADER_TIMEOUT = 10  # deploy/nginx: client_header_timeout
SLOW_CLIENTS = 64
DRIP_SECONDS = 1.0


@needs_nginx
def test_the_proxy_config_passes_nginx_t(tmp_path):
    tls = ensure_tls(tmp_path / "tls")
    values = nginx_values(tls, https_port=free_port(), http_port=free_port(), upstream="127.0.0.1:8000")
    conf = write_nginx_conf(tmp_path, values)

    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "warn" not in result.stderr.replace("nginx.conf syntax is ok", ""), result.stderr


@dataclass
class Stack:
    https_port: int
    gunicorn_port: int
    ca: Path
    env: dict[str, str]
    workdir: Path
    gunicorn_log: Path

    def request(
        self, method: str, path: str, *, source: str, body: dict | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], dict]:
        context = ssl.create_default_context(cafile=str(self.ca))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.https_port, context=context, timeout=60, source_address=(source, 0)
        )
        try:
            connection.request(
                method, path, body=json.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json", **(headers or {})},
            )  # fmt: skip
            response = connection.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw or b"{}")
        finally:
            connection.close()

    def issue_token(self, serial: str) -> str:
        serials = self.workdir / f"{serial}.csv"
        serials.write_text(f"serial,product\n{serial},proxy\n")
        out = self.workdir / f"{serial}-tokens.csv"
        for args in (["import_serials", str(serials)], ["issue_tokens", "--serial", serial, "--out", str(out)]):
            subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True)
        return out.read_text().splitlines()[1].split(",")[1]

    def logged_client(self, request_id: str) -> str | None:
        for line in self.gunicorn_log.read_text().splitlines():
            if line.startswith("{") and f'"request_id": "{request_id}"' in line:
                return json.loads(line)["client"]
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    if NGINX is None:
        pytest.skip(NO_NGINX)
    workdir = tmp_path_factory.mktemp("proxy")
    tls = ensure_tls(workdir / "tls")
    aws_port, gunicorn_port, https_port, http_port = free_port(), free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "SECURE_SSL_REDIRECT"))
    }
    env.update(
        SECRET_KEY="proxy-secret-key-0123456789abcdefghijklmnop",
        CVM_TOKEN_HMAC_KEY="proxy-token-hmac-key-0123456789abcdefghijkl",
        CVM_AUDIT_HMAC_KEY="proxy-audit-hmac-key-0123456789abcdefghijkl",
        DATABASE_URL=f"sqlite:///{workdir / 'portal.sqlite3'}",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # As deploy/compose.yaml: the proxy's address is trusted, one proxy appends X-Forwarded-For.
        CVM_TRUSTED_PROXY_ADDRESSES="127.0.0.1",
        CVM_TRUSTED_PROXIES="1",
        CVM_REQUESTS_PER_ADDRESS=str(REQUESTS_PER_ADDRESS),
        CVM_METRICS_TOKEN="proxy-metrics-token",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{aws_port}",
        AWS_ACCESS_KEY_ID="proxy",
        AWS_SECRET_ACCESS_KEY="proxy",
        AWS_DEFAULT_REGION="us-east-1",
        # One process of eight threads: 64 slow clients would hold every thread eight times over.
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="8",
        GUNICORN_BIND=f"127.0.0.1:{gunicorn_port}",
    )
    gunicorn_log = workdir / "gunicorn.log"
    with Children() as children:
        emulator = children.start(
            "the AWS emulator", emulator_command(aws_port), env=env,
            output=workdir / "emulator.log",
        )  # fmt: skip
        wait_for_port(aws_port, what="the AWS emulator", process=emulator)
        for command in (["migrate", "-v0"], ["bootstrap_aws"]):
            manage(env, *command)
        children.start(
            "gunicorn", [PYTHON, "-m", "gunicorn", "cvm_portal.wsgi:application", "--config", "gunicorn.conf.py"],
            env=env, output=gunicorn_log,
        )  # fmt: skip
        conf = write_nginx_conf(
            workdir,
            nginx_values(
                tls, https_port=https_port, http_port=http_port, upstream=f"127.0.0.1:{gunicorn_port}",
                device_calls_per_second=DEVICE_CALLS_PER_SECOND, device_calls_burst=DEVICE_CALLS_BURST,
            ),
        )  # fmt: skip
        proxy = children.start("nginx", nginx_command(workdir, conf), env=env, output=workdir / "nginx.log")
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        health = f"https://127.0.0.1:{https_port}/api/v1/health"
        wait_until(
            lambda: urllib.request.urlopen(health, context=context, timeout=2).status == 200,
            what="the portal behind nginx",
            process=proxy,
        )
        yield Stack(https_port, gunicorn_port, tls.ca_cert, env, workdir, gunicorn_log)


def test_the_portal_behind_the_proxy_is_ready_and_the_image_probe_agrees(stack):
    status, _, body = stack.request("GET", "/api/v1/ready", source="127.0.0.2")

    assert status == 200, body
    assert body["failed"] == []
    probe = subprocess.run([PYTHON, "scripts/ready_probe.py"], cwd=ROOT, env=stack.env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_per_address_limits_see_the_client_behind_the_proxy_not_what_it_claims(stack):
    answers = []
    # Each request claims another address; the portal must count them all against 127.0.0.3. At most
    # two windows' worth, in case a minute boundary falls in the middle.
    for number in range(2 * REQUESTS_PER_ADDRESS + 1):
        request_id = uuid.uuid4().hex
        status, _, _ = stack.request(
            "POST", "/api/v1/certificates", source="127.0.0.3",
            body={"serial": f"PX-{number:04d}", "token": "not-a-token-0000"},
            headers={"X-Forwarded-For": f"10.9.{number}.1", "X-Request-ID": request_id},
        )  # fmt: skip
        answers.append((status, request_id))
        if status == 429:
            break
    other, _, _ = stack.request(
        "POST", "/api/v1/certificates", source="127.0.0.4", body={"serial": "PX-OTHER", "token": "not-a-token-0000"}
    )

    assert answers[-1][0] == 429, "the per-address request limit never applied"
    assert {status for status, _ in answers[:-1]} == {403}
    assert other == 403, "another address is not limited by the first one's requests"
    assert {stack.logged_client(request_id) for _, request_id in answers} == {"127.0.0.3"}


def test_the_proxy_limits_concurrent_requests_per_address(stack):
    context = ssl.create_default_context(cafile=str(stack.ca))
    held: list[ssl.SSLSocket] = []
    # Not a device call: those are also limited per second (limit_req), which would answer some of them.
    header = (
        b"POST /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    try:
        # Headers complete, body never sent: each is a request being served, counted by limit_conn.
        for _ in range(CONNECTIONS_PER_ADDRESS):
            sock = context.wrap_socket(
                socket.create_connection(("127.0.0.1", stack.https_port), timeout=10, source_address=("127.0.0.5", 0)),
                server_hostname="127.0.0.1",
            )
            sock.sendall(header)
            held.append(sock)
        time.sleep(0.5)
        over, headers, body = stack.request("GET", "/api/v1/health", source="127.0.0.5")
        elsewhere, _, _ = stack.request("GET", "/api/v1/health", source="127.0.0.6")
    finally:
        for sock in held:
            sock.close()

    assert over == 429
    assert headers["Retry-After"] == "5"
    assert body == {"detail": "too many requests from this address; retry later"}
    assert elsewhere == 200


def test_a_flood_of_device_calls_beyond_the_rate_is_answered_by_the_proxy_alone(stack):
    context = ssl.create_default_context(cafile=str(stack.ca))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", stack.https_port, context=context, timeout=60, source_address=("127.0.0.10", 0)
    )
    answers: list[tuple[int, str, bytes, str | None]] = []
    started = time.monotonic()
    try:
        for number in range(150):  # one kept-alive connection, as fast as the proxy answers
            request_id = uuid.uuid4().hex
            body = json.dumps({"serial": f"PX-FLOOD-{number:04d}", "token": "not-a-token-0000"})
            connection.request("POST", "/api/v1/certificates", body=body,
                               headers={"Content-Type": "application/json", "X-Request-ID": request_id})  # fmt: skip
            response = connection.getresponse()
            answers.append((response.status, request_id, response.read(), response.getheader("Retry-After")))
    finally:
        connection.close()
    seconds = time.monotonic() - started
    other, _, _ = stack.request(
        "POST", "/api/v1/certificates", source="127.0.0.11", body={"serial": "PX-OTHER", "token": "not-a-token-0000"}
    )

    # The proxy's own answer (deploy/nginx: @api_busy), told from the portal's (403, or its own 429 once
    # CVM_REQUESTS_PER_ADDRESS is spent) by its text.
    proxy_detail = "too many requests from this address; retry later"
    refused_here = [answer for answer in answers if json.loads(answer[2])["detail"] == proxy_detail]
    passed = [answer for answer in answers if json.loads(answer[2])["detail"] != proxy_detail]
    assert refused_here, f"150 calls in {seconds:.1f} s never met the proxy's rate"
    assert len(passed) <= DEVICE_CALLS_BURST + DEVICE_CALLS_PER_SECOND * seconds + 1
    assert {status for status, *_ in refused_here} == {429}
    assert {retry_after for *_, retry_after in refused_here} == {"5"}
    assert all(stack.logged_client(request_id) is None for _, request_id, _, _ in refused_here), (
        "a call the proxy refused reached the portal"
    )
    assert all(stack.logged_client(request_id) == "127.0.0.10" for _, request_id, _, _ in passed)
    assert other == 403, "another address keeps its own rate"


def test_the_proxys_own_answers_to_device_calls_are_json_on_the_earlier_call_too(stack):
    for path in ("/api/v1/certificates", "/getcert"):
        status, headers, body = stack.request("POST", path, source="127.0.0.12", body={"pad": "a" * 1_100_000})
        assert status == 413, path
        assert headers["Content-Type"] == "application/json", path
        assert body == {"detail": "request body too large"}, path


class SlowClients:
    """SLOW_CLIENTS connections from one address, each sending its request header one byte every
    DRIP_SECONDS and opening a new connection whenever the server closes one (so the count holds).
    Bounded: it stops by itself after `limit` seconds."""

    HEADER = b"POST /api/v1/certificates HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096

    def __init__(self, connect, *, limit: float = 45.0) -> None:
        self.connect = connect
        self.limit = limit
        self.stop = threading.Event()
        self.opened: dict[socket.socket, float] = {}
        self.lifetimes: list[float] = []
        self.answered = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> SlowClients:
        for _ in range(SLOW_CLIENTS):
            self.opened[self.connect()] = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.opened:
            sock.close()

    def run(self) -> None:
        started = time.monotonic()
        position = 0
        while not self.stop.is_set() and time.monotonic() - started < self.limit:
            for sock, opened in list(self.opened.items()):
                try:
                    sock.settimeout(0.05)
                    try:
                        if sock.recv(1) != b"":
                            self.answered += 1  # a slow client must never get an answer
                        raise ConnectionError("closed by the server")
                    except (TimeoutError, ssl.SSLWantReadError):
                        pass
                    sock.sendall(self.HEADER[position % len(self.HEADER) : position % len(self.HEADER) + 1])
                except (OSError, ssl.SSLError):
                    self.lifetimes.append(time.monotonic() - opened)
                    sock.close()
                    del self.opened[sock]
                    with contextlib.suppress(OSError):
                        self.opened[self.connect()] = time.monotonic()
            position += 1
            self.stop.wait(DRIP_SECONDS)


def test_sixty_four_slow_clients_do_not_stop_a_device_from_getting_its_certificate(stack):
    token = stack.issue_token("PX-DEVICE")
    context = ssl.create_default_context(cafile=str(stack.ca))

    def through_proxy() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=10, source_address=("127.0.0.7", 0))
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    with SlowClients(through_proxy) as attack:
        time.sleep(2 * DRIP_SECONDS)
        assert len(attack.opened) == SLOW_CLIENTS
        started = time.monotonic()
        status, _, body = stack.request(
            "POST", "/api/v1/certificates", source="127.0.0.8",
            body={"serial": "PX-DEVICE", "token": token, "csr": make_csr("PX-DEVICE")[0]},
        )  # fmt: skip
        served_in = time.monotonic() - started
        # Keep dripping until the proxy has cut the first slow clients off (header timeout).
        deadline = time.monotonic() + HEADER_TIMEOUT + 15
        while not attack.lifetimes and time.monotonic() < deadline:
            time.sleep(0.5)

    assert status == 201, body
    assert body["serial"] == "PX-DEVICE"
    assert body["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert served_in < 30
    assert attack.lifetimes, "the proxy never closed a connection that sent its header byte by byte"
    assert min(attack.lifetimes) < HEADER_TIMEOUT + 3 * DRIP_SECONDS + 5
    assert attack.answered == 0


def test_the_same_slow_clients_straight_at_gunicorn_stop_it(stack):
    # Why the proxy is there: without it, the clients of the previous test starve gunicorn's threads.
    def straight() -> socket.socket:
        return socket.create_connection(("127.0.0.1", stack.gunicorn_port), timeout=10, source_address=("127.0.0.9", 0))

    def health(timeout: float) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", stack.gunicorn_port, timeout=timeout)
        try:
            connection.request("GET", "/api/v1/health", headers={"Host": "127.0.0.1", "X-Forwarded-Proto": "https"})
            return connection.getresponse().status
        finally:
            connection.close()

    with SlowClients(straight, limit=20):
        time.sleep(2 * DRIP_SECONDS)
        with pytest.raises(TimeoutError):
            health(timeout=3)
    wait_until(lambda: health(timeout=2) == 200, what="the portal behind nginx", timeout=20)
