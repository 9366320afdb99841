#!/usr/bin/env python3
"""Device-side client of the CVM portal: trade a serial and one-time token for an AWS IoT certificate.

Standalone (Python 3.11+ and the `cryptography` package, no Django). By default the private key is
generated here and only a CSR leaves the device; `--server-key` asks the portal to have AWS generate
it instead. The portal's TLS certificate is verified against the CA given with `--ca` (pinned: the
system's trust store is not used when `--ca` is given), and TLS 1.2 is the minimum.

    python3 client/cvm_client.py --url https://127.0.0.1:8443 --ca var/tls/ca.pem \\
        --serial SN-0001 --token-file token.txt --out device-SN-0001

Writes certificate.pem, private.key, AmazonRootCA1.pem and endpoint.txt into --out, each mode 0600.
Exit status: 0 issued, 2 refused (wrong serial/token, or bad request), 1 gave up (network, 5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

RETRY_STATUSES = {409, 429, 502, 503, 504}
MAX_WAIT = 300


def generate_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(serial: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


class Refused(Exception):
    pass


def request_certificate(
    url: str, body: dict[str, str], context: ssl.SSLContext, *, attempts: int, timeout: float
) -> dict[str, str]:
    data = json.dumps(body).encode()
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's portal
            url.rstrip("/") + "/api/v1/certificates",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=timeout) as response:  # noqa: S310
                return json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            if error.code not in RETRY_STATUSES:
                raise Refused(f"HTTP {error.code}: {detail}") from None
            wait = _retry_after(error.headers.get("Retry-After"), attempt)
            print(f"HTTP {error.code}; retrying in {wait:.0f} s", file=sys.stderr)
        except urllib.error.URLError as error:
            if isinstance(error.reason, ssl.SSLCertVerificationError):
                raise Refused(f"the portal's TLS certificate could not be verified: {error.reason}") from None
            wait = _backoff(attempt)
            print(f"cannot reach the portal ({error.reason}); retrying in {wait:.0f} s", file=sys.stderr)
        except (TimeoutError, ConnectionError) as error:
            wait = _backoff(attempt)
            print(f"connection failed ({error}); retrying in {wait:.0f} s", file=sys.stderr)
        if attempt < attempts:
            time.sleep(wait)
    raise TimeoutError(f"no certificate after {attempts} attempts")


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        return min(MAX_WAIT, max(1.0, float(header or "")))
    except ValueError:
        return _backoff(attempt)


def _backoff(attempt: int) -> float:
    # Full jitter, so a factory's worth of devices that failed together do not retry together.
    return random.uniform(1, min(MAX_WAIT, 2**attempt))  # noqa: S311 - timing, not security


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="portal base URL, https://...")
    parser.add_argument("--serial", required=True)
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="the one-time token (prefer --token-file or CVM_TOKEN)")
    token.add_argument("--token-file", help="file holding the token")
    parser.add_argument("--ca", help="CA certificate that signed the portal's TLS certificate (pinned)")
    parser.add_argument("--out", required=True, help="directory for certificate, key and root CA")
    parser.add_argument("--server-key", action="store_true", help="let AWS generate the key (not recommended)")
    parser.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    parser.add_argument("--attempts", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    secret = args.token or os.environ.get("CVM_TOKEN")
    if args.token_file:
        secret = Path(args.token_file).read_text().strip()
    if not secret:
        parser.error("give the token with --token-file, --token or CVM_TOKEN")
    if not args.url.startswith("https://"):
        parser.error("the portal must be reached over https://")

    body = {"serial": args.serial, "token": secret}
    key = None
    if not args.server_key:
        key = generate_key(args.key_type)
        body["csr"] = build_csr(args.serial, key)
    try:
        answer = request_certificate(args.url, body, tls_context(args.ca), attempts=args.attempts, timeout=args.timeout)
    except Refused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:
        print(f"gave up: {error}", file=sys.stderr)
        return 1

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    if key is not None:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    else:
        key_pem = answer["private_key_pem"]
    write_private(out / "private.key", key_pem)
    write_private(out / "certificate.pem", answer["certificate_pem"])
    write_private(out / "AmazonRootCA1.pem", answer["root_ca_pem"])
    write_private(out / "endpoint.txt", answer["iot_endpoint"] + "\n")
    print(
        f"certificate {answer['certificate_id']} for thing {answer['thing_name']} written to {out}; "
        f"connect to {answer['iot_endpoint']}:8883"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
