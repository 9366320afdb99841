"""End to end: gunicorn over TLS and the AWS emulator as separate processes, driven over HTTPS.

A device provisions with the device client in both key modes; twenty requests race across gunicorn
worker processes; and afterwards no token or private key is found in the database or any log.
"""

from __future__ import annotations

import csv
import json
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.local_tls import ensure_tls
from scripts.processes import (
    PYTHON,
    ROOT,
    Children,
    child_env,
    emulator_command,
    free_port,
    gunicorn_command,
    manage,
    wait_for_port,
    wait_for_url,
)

from .awsstate import AwsState

pytestmark = pytest.mark.e2e


@dataclass
class Portal:
    url: str
    ca: Path
    env: dict[str, str]
    workdir: Path
    logs: list[Path]
    aws: AwsState
    secrets_seen: list[str] = field(default_factory=list)

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return manage(self.env, *args)

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
    aws_endpoint = f"http://127.0.0.1:{aws_port}"
    env = child_env(
        # The real thing: the suite's own database, AWS and quota settings stay behind.
        drop=("AWS_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "CVM_AWS_RATES"),
        SECRET_KEY="e2e-secret-key-0123456789abcdefghijklmnop",
        CVM_TOKEN_HMAC_KEY="e2e-token-hmac-key-0123456789abcdefghijkl",
        CVM_AUDIT_HMAC_KEY="e2e-audit-hmac-key-0123456789abcdefghijkl",
        DATABASE_URL=f"sqlite:///{workdir / 'portal.sqlite3'}",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        # Short, so the crash test sees its dead claim recovered within seconds.
        CVM_CLAIM_TIMEOUT_SECONDS="3",
        AWS_ENDPOINT_URL=aws_endpoint,
        AWS_ACCESS_KEY_ID="e2e",
        AWS_SECRET_ACCESS_KEY="e2e",
        AWS_DEFAULT_REGION="us-east-1",
        CVM_ACTOR="e2e",
    )
    logs = [workdir / "emulator.log", workdir / "gunicorn.log", workdir / "sync.log"]
    with Children() as children:
        # Each process boots while the next step runs: the emulator during the migration, gunicorn during
        # bootstrap_aws (nothing reaches it before the health check). The DynamoDB worker starts last,
        # once its table exists.
        emulator = children.start("AWS emulator", emulator_command(aws_port), env=env, output=logs[0])
        manage(env, "migrate", "-v0")
        web = children.start(
            "portal", gunicorn_command(f"127.0.0.1:{web_port}", tls=tls, workers=3, threads=8), env=env, output=logs[1]
        )
        wait_for_port(aws_port, what="the AWS emulator", process=emulator)
        manage(env, "bootstrap_aws")
        children.start("DynamoDB sync", [PYTHON, "manage.py", "sync_dynamodb"], env=env, output=logs[2])
        url = f"https://127.0.0.1:{web_port}"
        wait_for_url(url + "/api/v1/health", cafile=tls.ca_cert, what="the portal", process=web)
        yield Portal(url=url, ca=tls.ca_cert, env=env, workdir=workdir, logs=logs, aws=AwsState.connect(aws_endpoint))


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
    certificates = portal.aws.thing_certificates(serial)
    assert len(certificates) == 1
    description = certificates[0]
    assert description["status"] == "ACTIVE"
    assert description["certificatePem"].strip() == (out / "certificate.pem").read_text().strip()
    assert portal.aws.policies_of(description["certificateArn"]) == ["cvm-device-policy"]

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
    assert len(portal.aws.iot.list_thing_principals(thingName=serial)["principals"]) == 1


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
    iot = portal.aws.iot
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
    assert len(portal.aws.thing_certificates(serial)) == 1


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
    left = [c["status"] for c in portal.aws.thing_certificates(serial)]
    assert left == ["INACTIVE"], "created and attached, never activated: unusable"

    result = run_client(portal, serial, token, tmp_path / "device")

    assert result.returncode == 0, result.stderr
    certificates = portal.aws.thing_certificates(serial)
    assert len(certificates) == 1, "the dead issuance's certificate was removed"
    status = certificates[0]
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
    table = json.dumps(list(portal.aws.table("cvm-device-association").values()))
    haystacks["dynamodb"] = table
    assert "E2E-CSR" in table
    assert "E2E-CSR" in dump
    for secret in portal.secrets_seen:
        needle = secret.strip().splitlines()[1] if secret.startswith("-----") else secret
        for name, haystack in haystacks.items():
            assert needle not in haystack, f"a secret was found in the {name}"
