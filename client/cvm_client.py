#!/usr/bin/env python3
"""Device-side client of the CVM portal: get an AWS IoT certificate, and later rotate its key.

Standalone (Python 3.11+, `cryptography`, and PyJWT for the rotation proof; no Django). The portal's TLS
certificate is verified against the CA given with `--ca` (pinned: the system's trust store is not used
when `--ca` is given), and TLS 1.2 is the minimum.

Provision (first boot): trade the serial and one-time token for a certificate.

    python3 client/cvm_client.py --url https://127.0.0.1:8443 --ca var/tls/ca.pem \\
        --serial SN-0001 --token-file token.txt --out device-SN-0001

  The key is generated here and written to --out (mode 0600) before the CSR is sent, so if the answer
  is lost, running the same command again sends a CSR for the same key and the portal hands the same
  certificate back. `--server-key` asks the portal to have AWS generate the key instead (its answer
  cannot be fetched again). Writes certificate.pem, private.key, AmazonRootCA1.pem and endpoint.txt.

Rotate: prove possession of the current key, get a certificate for a new one, check it, confirm it.

    python3 client/cvm_client.py rotate --url https://127.0.0.1:8443 --ca var/tls/ca.pem \\
        --serial SN-0001 --out device-SN-0001 [--check-host HOST:8883]

  The new key and certificate are written beside the old ones (pending-private.key,
  pending-certificate.pem) before anything is confirmed. With --check-host, a TLS handshake with the new
  pair must succeed first (the AWS IoT endpoint, port 8883). After the confirmation the new pair replaces
  certificate.pem and private.key (each by an atomic rename; the old ones are kept as previous-*). An
  interrupted rotation is finished by running the same command again.

Exit status: 0 done; 2 refused (wrong serial, token or proof, or a bad request); 1 gave up (network,
5xx, retries exhausted); 3 the TLS check with the new pair failed (nothing confirmed: the portal rolls
the rotation back after its grace period, and the current certificate keeps working).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
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


def post_json(
    url: str, path: str, body: dict[str, str], context: ssl.SSLContext, *, attempts: int, timeout: float
) -> dict[str, str]:
    """POST `body` to the portal, retrying what may succeed later (409, 429, 5xx, network) with back-off."""
    data = json.dumps(body).encode()
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's portal
            url.rstrip("/") + path,
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
    raise TimeoutError(f"no answer after {attempts} attempts")


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        return min(MAX_WAIT, max(1.0, float(header or "")))
    except ValueError:
        return _backoff(attempt)


def _backoff(attempt: int) -> float:
    # Full jitter, so a factory's worth of devices that failed together do not retry together.
    return random.uniform(1, min(MAX_WAIT, 2**attempt))  # noqa: S311 - timing, not security


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_or_create_key(path: Path, kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """The key at `path`, or a new one written there (0600) before anything leaves the device."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{path} holds neither an EC nor an RSA key")
        return key
    key = generate_key(kind)
    write_private(path, key_pem(key))
    return key


def replace_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    write_private(temporary, text)
    os.replace(temporary, path)


def proof(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, serial: str, audience: str, csr: str | None) -> str:
    """The JWT that proves possession of `key` (SPEC §3.2), signed with PyJWT."""
    import jwt  # PyJWT; only rotation needs it

    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "PS256"
    else:
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    claims: dict[str, object] = {"sub": serial, "aud": audience, "iat": int(time.time()), "jti": os.urandom(16).hex()}
    if csr is not None:
        der = x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER)
        claims["csr_sha256"] = hashlib.sha256(der).hexdigest()
    return jwt.encode(claims, key, algorithm=algorithm)


def tls_check(host: str, certificate: Path, key: Path, timeout: float) -> None:
    """A TLS handshake with the new pair against `host[:port]` (the AWS IoT endpoint, port 8883)."""
    name, _, port = host.rpartition(":") if ":" in host else (host, "", "8883")
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=certificate, keyfile=key)
    with (
        socket.create_connection((name, int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.do_handshake()


def provision(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    secret = args.token or os.environ.get("CVM_TOKEN")
    if args.token_file:
        secret = Path(args.token_file).read_text().strip()
    if not secret:
        parser.error("give the token with --token-file, --token or CVM_TOKEN")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {"serial": args.serial, "token": secret}
    key = None
    if not args.server_key:
        # On disk first: if the answer is lost, the next run sends a CSR for this same key and the portal
        # gives the same certificate back.
        key = load_or_create_key(out / "private.key", args.key_type)
        body["csr"] = build_csr(args.serial, key)
    try:
        answer = post_json(
            args.url, "/api/v1/certificates", body, tls_context(args.ca), attempts=args.attempts, timeout=args.timeout
        )
    except Refused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:
        print(f"gave up: {error}", file=sys.stderr)
        return 1
    if key is None:
        write_private(out / "private.key", answer["private_key_pem"])
    write_private(out / "certificate.pem", answer["certificate_pem"])
    write_private(out / "AmazonRootCA1.pem", answer["root_ca_pem"])
    write_private(out / "endpoint.txt", answer["iot_endpoint"] + "\n")
    print(
        f"certificate {answer['certificate_id']} for thing {answer['thing_name']} written to {out}; "
        f"connect to {answer['iot_endpoint']}:8883"
    )
    return 0


def rotate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    out = Path(args.out)
    current_key_path, pending_key_path = out / "private.key", out / "pending-private.key"
    pending_certificate_path = out / "pending-certificate.pem"
    if not current_key_path.exists():
        parser.error(f"{current_key_path} does not exist: provision the device first")
    context = tls_context(args.ca)
    current_key = serialization.load_pem_private_key(current_key_path.read_bytes(), password=None)
    new_key = load_or_create_key(pending_key_path, args.key_type)
    try:
        if not pending_certificate_path.exists():
            csr = build_csr(args.serial, new_key)
            body = {"serial": args.serial, "csr": csr, "proof": proof(current_key, args.serial, "cvm-rotate", csr)}
            answer = post_json(
                args.url, "/api/v1/certificates/rotate", body, context, attempts=args.attempts, timeout=args.timeout
            )
            replace_atomically(pending_certificate_path, answer["certificate_pem"])
            print(f"new certificate {answer['certificate_id']}; confirm by {answer['confirm_by']}")
        if args.check_host:
            try:
                tls_check(args.check_host, pending_certificate_path, pending_key_path, args.timeout)
            except (OSError, ssl.SSLError) as error:
                print(f"TLS check with the new certificate failed: {error}; not confirmed", file=sys.stderr)
                return 3
        confirmation = {"serial": args.serial, "proof": proof(new_key, args.serial, "cvm-confirm", None)}
        confirmed = post_json(
            args.url,
            "/api/v1/certificates/rotate/confirm",
            confirmation,
            context,
            attempts=args.attempts,
            timeout=args.timeout,
        )
    except Refused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    except TimeoutError as error:
        print(f"gave up: {error}", file=sys.stderr)
        return 1
    # The old pair is revoked now: keep it aside, then move the new one into place, each by a rename.
    certificate_path = out / "certificate.pem"
    if certificate_path.exists():
        os.replace(certificate_path, out / "previous-certificate.pem")
    os.replace(current_key_path, out / "previous-private.key")
    os.replace(pending_certificate_path, certificate_path)
    os.replace(pending_key_path, current_key_path)
    print(
        f"rotated to certificate {confirmed['certificate_id']}; "
        f"{confirmed['revoked_certificate_id']} is revoked; files in {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("provision", "rotate") else "provision"
    parser = argparse.ArgumentParser(
        prog=f"cvm_client.py {command}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="portal base URL, https://...")
    parser.add_argument("--serial", required=True)
    parser.add_argument("--ca", help="CA certificate that signed the portal's TLS certificate (pinned)")
    parser.add_argument("--out", required=True, help="directory for certificate, key and root CA")
    parser.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="type of a new key (default ec)")
    parser.add_argument("--attempts", type=int, default=8, help="tries before giving up (default 8)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    if command == "provision":
        token = parser.add_mutually_exclusive_group()
        token.add_argument("--token", help="the one-time token (prefer --token-file or CVM_TOKEN)")
        token.add_argument("--token-file", help="file holding the token")
        parser.add_argument("--server-key", action="store_true", help="let AWS generate the key (not recommended)")
    else:
        parser.add_argument("--check-host", metavar="HOST[:PORT]", help="TLS handshake with the new pair first")
    args = parser.parse_args(argv)
    if not args.url.startswith("https://"):
        parser.error("the portal must be reached over https://")
    if args.attempts < 1:
        parser.error("--attempts must be 1 or more")
    return provision(args, parser) if command == "provision" else rotate(args, parser)


if __name__ == "__main__":
    sys.exit(main())
