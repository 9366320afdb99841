"""Tokens, CSRs and certificates: the portal's cryptography in one place."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.conf import settings

# 24 random bytes = 192 bits, URL-safe so it survives CSV files, flashing tools and query strings.
TOKEN_BYTES = 24
MAX_CSR_BYTES = 16 * 1024
ALLOWED_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
# AWS IoT accepts RSA keys from 2048 bits; larger than 4096 only costs CPU on every verification.
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 4096
CSR_PEM_RE = re.compile(
    r"\A\s*-----BEGIN CERTIFICATE REQUEST-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE REQUEST-----\s*\Z"
)


def token_generate() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _keys() -> list[bytes]:
    return [key.encode() for key in [settings.CVM_TOKEN_HMAC_KEY, *settings.CVM_TOKEN_HMAC_KEY_FALLBACKS]]


def token_digest(token: str) -> str:
    """The digest stored for a token, always under the current key."""
    return hmac.new(_keys()[0], token.encode(), hashlib.sha256).hexdigest()


def token_matches(token: str, stored_digest: str) -> str | None:
    """Return the stored digest when `token` produces it under the current or a fallback key.

    Every key is tried, and compared in constant time, so timing tells nothing about which failed.
    """
    match = None
    for key in _keys():
        candidate = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(candidate, stored_digest or "-" * 64) and stored_digest:
            match = stored_digest
    return match


class CsrInvalid(ValueError):
    """The CSR cannot be used; the message is safe to return to the device."""


@dataclass(frozen=True)
class ValidatedCsr:
    pem: str
    key_description: str


def csr_validate(pem: str, *, serial: str) -> ValidatedCsr:
    """Check a PKCS#10 request as SPEC §3 requires; raise CsrInvalid with a message for the device."""
    if len(pem.encode()) > MAX_CSR_BYTES:
        raise CsrInvalid(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    # The regular expression bounds what reaches the ASN.1 parser to one well-formed PEM block.
    if not CSR_PEM_RE.match(pem):
        raise CsrInvalid("CSR must be a single PEM 'CERTIFICATE REQUEST' block")
    # cryptography parses lazily: a request that loads can still fail on its key or subject, so all
    # of it is read here, before anything else looks at it.
    try:
        csr = x509.load_pem_x509_csr(pem.strip().encode())
        key = csr.public_key()
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:  # noqa: BLE001 - ValueError, InvalidVersion, UnsupportedAlgorithm ... all mean "unusable"
        raise CsrInvalid("CSR could not be parsed") from None
    if isinstance(key, rsa.RSAPublicKey):
        # Size first: verifying a signature with a huge key is the one costly step, and is never reached.
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise CsrInvalid(f"RSA key must be {RSA_MIN_BITS} to {RSA_MAX_BITS} bits")
        description = f"RSA-{key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ALLOWED_EC_CURVES):
            raise CsrInvalid("EC key must be on P-256 or P-384")
        description = f"EC-{key.curve.name}"
    else:
        raise CsrInvalid("key must be RSA (2048 bits or more) or EC P-256/P-384")
    try:
        signature_valid = csr.is_signature_valid
    except Exception:  # noqa: BLE001 - a signature that cannot be checked is not a valid one
        signature_valid = False
    if not signature_valid:
        raise CsrInvalid("CSR signature is not valid")
    if len(common_names) != 1 or common_names[0].value != serial:
        raise CsrInvalid("CSR subject CN must equal the serial")
    return ValidatedCsr(pem=pem.strip() + "\n", key_description=description)


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 over the certificate's DER encoding, as `openssl x509 -fingerprint -sha256` shows it."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex()


@functools.cache
def amazon_root_ca_pem() -> str:
    """Amazon Root CA 1, which AWS IoT's ATS endpoints chain to, taken from certifi's bundle."""
    bundle = open(certifi.where(), encoding="ascii").read()  # noqa: SIM115 - read once per process
    marker = '# Label: "Amazon Root CA 1"'
    start = bundle.index("-----BEGIN CERTIFICATE-----", bundle.index(marker))
    end = bundle.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return bundle[start:end] + "\n"
