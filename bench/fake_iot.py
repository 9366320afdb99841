"""A fake AWS IoT control plane for the benchmarks: fixed latency per call, optional per-API quotas.

It answers the calls a vend makes (and their undo) with canned, well-formed responses. With a quota it
behaves like AWS: a token bucket per API, and `ThrottlingException` (HTTP 400) beyond it.

    python -m bench.fake_iot --port 5600 --latency-ms 50 [--quota 15]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROUTES = [
    ("POST", r"^/things/[^/]+$", "CreateThing"),
    ("PATCH", r"^/things/[^/]+$", "UpdateThing"),
    ("POST", r"^/keys-and-certificate$", "CreateKeysAndCertificate"),
    ("POST", r"^/certificates$", "CreateCertificateFromCsr"),
    ("PUT", r"^/target-policies/[^/]+$", "AttachPolicy"),
    ("POST", r"^/target-policies/[^/]+$", "DetachPolicy"),
    ("PUT", r"^/things/[^/]+/principals$", "AttachThingPrincipal"),
    ("DELETE", r"^/things/[^/]+/principals$", "DetachThingPrincipal"),
    ("GET", r"^/things/[^/]+/principals$", "ListThingPrincipals"),
    ("PUT", r"^/certificates/[^/]+$", "UpdateCertificate"),
    ("DELETE", r"^/certificates/[^/]+$", "DeleteCertificate"),
    ("GET", r"^/endpoint$", "DescribeEndpoint"),
]


def _certificate() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


class Bucket:
    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.stamp, self.lock = rate, rate, time.monotonic(), threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


class FakeIot:
    def __init__(self, latency: float, quota: float | None) -> None:
        self.latency = latency
        self.quota = quota
        self.buckets: dict[str, Bucket] = {}
        self.calls: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self.lock = threading.Lock()
        self.certificate_pem, self.private_key_pem = _certificate()

    def answer(self, operation: str) -> tuple[int, dict]:
        with self.lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            bucket = self.buckets.setdefault(operation, Bucket(self.quota)) if self.quota else None
        if bucket is not None and not bucket.take():
            with self.lock:
                self.throttled[operation] = self.throttled.get(operation, 0) + 1
            return 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
        time.sleep(self.latency)
        certificate_id = uuid.uuid4().hex * 2
        arn = f"arn:aws:iot:us-east-1:123456789012:cert/{certificate_id}"
        if operation == "CreateKeysAndCertificate":
            return 200, {
                "certificateId": certificate_id,
                "certificateArn": arn,
                "certificatePem": self.certificate_pem,
                "keyPair": {"PublicKey": "-", "PrivateKey": self.private_key_pem},
            }
        if operation == "CreateCertificateFromCsr":
            return 200, {"certificateId": certificate_id, "certificateArn": arn, "certificatePem": self.certificate_pem}
        if operation == "CreateThing":
            return 200, {"thingName": "x", "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/x", "thingId": "1"}
        if operation == "DescribeEndpoint":
            return 200, {"endpointAddress": "bench-ats.iot.us-east-1.amazonaws.com"}
        if operation == "ListThingPrincipals":
            return 200, {"principals": []}
        return 200, {}


def handler_for(fake: FakeIot) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without this, Nagle plus delayed ACK adds ~40 ms.
        disable_nagle_algorithm = True

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            if path == "/stats":
                status, body = 200, {"calls": fake.calls, "throttled": fake.throttled}
            else:
                operation = next(
                    (op for method, pattern, op in ROUTES if method == self.command and re.match(pattern, path)), None
                )
                status, body = fake.answer(operation) if operation else (404, {"__type": "UnknownOperation"})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status >= 400:
                self.send_header("x-amzn-ErrorType", body.get("__type", "Error"))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--quota", type=float, default=None, help="calls per second per API")
    args = parser.parse_args()
    fake = FakeIot(args.latency_ms / 1000, args.quota)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(fake))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
