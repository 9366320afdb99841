"""End to end: gunicorn over TLS and the AWS emulator as separate processes, driven over HTTPS.

A device provisions with the device client in both key modes; twenty requests race across gunicorn
worker processes; and afterwards no token or private key is found in the database or any log.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from scripts.local_tls import ensure_tls

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("service did not come up")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Portal:
    url: str
    ca: Path
    env: dict[str, str]
    workdir: Path
    logs: list[Path]
    aws_endpoint: str
    secrets_seen: list[str] = field(default_factory=list)

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=True
        )

    def issue_token(self, serial: str) -> str:
        self.manage("import_serials", str(self.write(f"{serial}.csv", f"serial,product\n{serial},e2e\n")))
        out = self.workdir / f"{serial}-tokens.csv"
        self.manage("issue_tokens", "--serial", serial, "--out", str(out))
        token = next(csv.DictReader(out.open()))["token"]
        self.secrets_seen.append(token)
        return token

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path

    def iot(self):
        return boto3.client("iot", endpoint_url=self.aws_endpoint, region_name="us-east-1")

    def post(self, body: dict[str, str]) -> tuple[int, dict]:
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(
            self.url + "/api/v1/certificates",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def portal(tmp_path_factory) -> Iterator[Portal]:
    workdir = tmp_path_factory.mktemp("e2e")
    tls = ensure_tls(workdir / "tls")
    aws_port, web_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"))
    }
    env.update(
        SECRET_KEY="e2e-secret-key-0123456789abcdefghijklmnop",
        CVM_TOKEN_HMAC_KEY="e2e-token-hmac-key-0123456789abcdefghijkl",
        CVM_AUDIT_HMAC_KEY="e2e-audit-hmac-key-0123456789abcdefghijkl",
        DATABASE_URL=f"sqlite:///{workdir / 'portal.sqlite3'}",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # Short, so the crash test sees its dead claim recovered within seconds.
        CVM_CLAIM_TIMEOUT_SECONDS="3",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{aws_port}",
        AWS_ACCESS_KEY_ID="e2e",
        AWS_SECRET_ACCESS_KEY="e2e",
        AWS_DEFAULT_REGION="us-east-1",
        CVM_ACTOR="e2e",
    )
    logs = [workdir / "emulator.log", workdir / "gunicorn.log", workdir / "sync.log"]
    processes = []

    def start(args: list[str], log: Path) -> subprocess.Popen:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    try:
        start([PYTHON, "-m", "scripts.emulator", "--port", str(aws_port)], logs[0])
        wait_until(lambda: socket.create_connection(("127.0.0.1", aws_port), timeout=1).close() is None)
        for command in (["migrate", "-v0"], ["bootstrap_aws"]):
            subprocess.run([PYTHON, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
        start(
            [
                PYTHON, "-m", "gunicorn", "cvm_portal.wsgi:application",
                "--config", str(ROOT / "gunicorn.conf.py"),
                "--bind", f"127.0.0.1:{web_port}",
                "--workers", "3", "--threads", "8",
                "--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key),
            ],
            logs[1],
        )  # fmt: skip
        start([PYTHON, "manage.py", "sync_dynamodb"], logs[2])
        url = f"https://127.0.0.1:{web_port}"
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        wait_until(lambda: urllib.request.urlopen(url + "/api/v1/health", context=context, timeout=2).status == 200)
        yield Portal(url=url, ca=tls.ca_cert, env=env, workdir=workdir, logs=logs, aws_endpoint=env["AWS_ENDPOINT_URL"])
    finally:
        stop(processes)


def run_client(portal: Portal, serial: str, token: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    token_file = portal.write(f"{serial}.token", token)
    return subprocess.run(
        [
            PYTHON, str(ROOT / "client" / "cvm_client.py"),
            "--url", portal.url, "--ca", str(portal.ca), "--serial", serial,
            "--token-file", str(token_file), "--out", str(out), *extra,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("serial", "extra"), [("E2E-CSR", ()), ("E2E-SERVERKEY", ("--server-key",))])
def test_device_client_provisions_over_https(portal, tmp_path, serial, extra):
    token = portal.issue_token(serial)
    out = tmp_path / "device"

    result = run_client(portal, serial, token, out, *extra)

    assert result.returncode == 0, result.stderr
    for name in ("certificate.pem", "private.key", "AmazonRootCA1.pem", "endpoint.txt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    portal.secrets_seen.append((out / "private.key").read_text())
    iot = portal.iot()
    principals = iot.list_thing_principals(thingName=serial)["principals"]
    assert len(principals) == 1
    description = iot.describe_certificate(certificateId=principals[0].rsplit("/", 1)[1])["certificateDescription"]
    assert description["status"] == "ACTIVE"
    assert description["certificatePem"].strip() == (out / "certificate.pem").read_text().strip()
    policies = iot.list_attached_policies(target=principals[0])["policies"]
    assert [p["policyName"] for p in policies] == ["cvm-device-policy"]

    again = run_client(portal, serial, token, tmp_path / "again", *extra)
    assert again.returncode == 2
    assert '{"detail":"invalid serial or token"}' in again.stderr


def test_a_lost_answer_is_recovered_by_running_the_client_again(portal, tmp_path):
    serial = "E2E-LOST"
    token = portal.issue_token(serial)
    out = tmp_path / "device"
    assert run_client(portal, serial, token, out).returncode == 0
    first = (out / "certificate.pem").read_text()
    (out / "certificate.pem").unlink()  # the answer never arrived; the key was already on disk

    again = run_client(portal, serial, token, out)

    assert again.returncode == 0, again.stderr
    assert (out / "certificate.pem").read_text() == first
    assert len(portal.iot().list_thing_principals(thingName=serial)["principals"]) == 1


def test_the_client_rotates_a_device_and_the_old_certificate_is_revoked(portal, tmp_path):
    serial = "E2E-ROTATE"
    out = tmp_path / "device"
    assert run_client(portal, serial, portal.issue_token(serial), out).returncode == 0
    old_certificate = (out / "certificate.pem").read_text()
    old_key = (out / "private.key").read_text()

    result = subprocess.run(
        [
            PYTHON, str(ROOT / "client" / "cvm_client.py"), "rotate", "--url", portal.url, "--ca", str(portal.ca),
            "--serial", serial, "--out", str(out),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (out / "previous-certificate.pem").read_text() == old_certificate
    assert (out / "previous-private.key").read_text() == old_key
    assert (out / "private.key").read_text() != old_key
    assert not (out / "pending-private.key").exists()
    iot = portal.iot()
    statuses = {
        iot.describe_certificate(certificateId=c["certificateId"])["certificateDescription"][
            "certificatePem"
        ].strip(): c["status"]
        for c in iot.list_certificates()["certificates"]
    }
    assert statuses[old_certificate.strip()] == "REVOKED"
    assert statuses[(out / "certificate.pem").read_text().strip()] == "ACTIVE"
    principals = iot.list_thing_principals(thingName=serial)["principals"]
    assert len(principals) == 1, "only the new certificate is attached"
    portal.secrets_seen.extend([old_key, (out / "private.key").read_text()])


def test_client_refuses_a_portal_it_cannot_verify(portal, tmp_path):
    other_ca = ensure_tls(tmp_path / "other").ca_cert
    token_file = portal.write("unverified.token", "whatever")
    result = subprocess.run(
        [
            PYTHON, str(ROOT / "client" / "cvm_client.py"), "--url", portal.url, "--ca", str(other_ca),
            "--serial", "E2E-X", "--token-file", str(token_file), "--out", str(tmp_path / "x"),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "could not be verified" in result.stderr
    assert not (tmp_path / "x" / "certificate.pem").exists()


def test_racing_requests_across_worker_processes_issue_one_certificate(portal):
    serial = "E2E-RACE"
    token = portal.issue_token(serial)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: portal.post({"serial": serial, "token": token}), range(20)))

    statuses = [status for status, _ in results]
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {201, 403, 409}, statuses
    portal.secrets_seen.append(next(body for status, body in results if status == 201)["private_key_pem"])
    principals = portal.iot().list_thing_principals(thingName=serial)["principals"]
    assert len(principals) == 1


CRASH_AFTER_ATTACH = """
import os, signal, sys
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "cvm_portal.settings"
django.setup()
from provisioning import aws, services

def die(**kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: created and attached, not yet activated

aws.iot_client().meta.events.register("after-call.iot.AttachThingPrincipal", die)
services.certificate_vend(serial=sys.argv[1], token=sys.stdin.read(), csr=None, client_address="127.0.0.1")
"""


def test_a_process_killed_before_activation_leaves_nothing_usable_and_the_device_recovers(portal, tmp_path):
    serial = "E2E-CRASH"
    token = portal.issue_token(serial)

    crashed = subprocess.run(
        [PYTHON, "-c", CRASH_AFTER_ATTACH, serial],
        cwd=ROOT, env=portal.env, input=token, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert crashed.returncode == -9, crashed.stderr
    iot = portal.iot()
    left = [
        iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])["certificateDescription"]["status"]
        for arn in iot.list_thing_principals(thingName=serial)["principals"]
    ]
    assert left == ["INACTIVE"], "created and attached, never activated: unusable"

    result = run_client(portal, serial, token, tmp_path / "device")

    assert result.returncode == 0, result.stderr
    principals = iot.list_thing_principals(thingName=serial)["principals"]
    assert len(principals) == 1, "the dead issuance's certificate was removed"
    status = iot.describe_certificate(certificateId=principals[0].rsplit("/", 1)[1])["certificateDescription"]
    assert status["status"] == "ACTIVE"
    assert status["certificatePem"].strip() == (tmp_path / "device" / "certificate.pem").read_text().strip()


def test_csr_path_over_https_keeps_the_csr_out_of_storage(portal):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    serial = "E2E-CSR2"
    token = portal.issue_token(serial)
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
        .sign(key, hashes.SHA384())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )

    status, body = portal.post({"serial": serial, "token": token, "csr": csr})

    assert status == 201
    assert "private_key_pem" not in body
    portal.secrets_seen.append(csr)


def test_no_token_or_private_key_reaches_the_database_or_any_log(portal):
    # Runs last in this module: it scans what the scenarios above left behind.
    assert len(portal.secrets_seen) >= 6, "the scenarios above must have run"
    portal.manage("sync_dynamodb", "--once")
    dump = portal.manage("dumpdata", "--all", "--indent", "0").stdout
    haystacks = {
        "database dump": dump,
        "sqlite file": (portal.workdir / "portal.sqlite3").read_bytes().decode("latin-1"),
    }
    for log in portal.logs:
        haystacks[log.name] = log.read_text(errors="replace")
    table = portal.manage(
        "shell",
        "-c",
        "from provisioning import aws; import json; "
        "print(json.dumps(list(aws.table_scan(table_name='cvm-device-association'))))",
    ).stdout
    haystacks["dynamodb"] = table
    assert "E2E-CSR" in table
    assert "E2E-CSR" in dump
    for secret in portal.secrets_seen:
        needle = secret.strip().splitlines()[1] if secret.startswith("-----") else secret
        for name, haystack in haystacks.items():
            assert needle not in haystack, f"a secret was found in the {name}"
