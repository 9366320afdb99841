"""Tokens, CSRs and certificates: the portal's cryptography in one place."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.conf import settings

# 24 random bytes = 192 bits, URL-safe so it survives CSV files, flashing tools and query strings.
TOKEN_BYTES = 24
MAX_CSR_BYTES = 16 * 1024
# What AWS IoT's CreateCertificateFromCsr accepts, as its API reference states: "The CSR must include a
# public key that is either an RSA key with a length of at least 2048 bits or an ECC key from NIST P-256,
# NIST P-384, or NIST P-521 curves" (https://docs.aws.amazon.com/iot/latest/apireference/API_CreateCertificateFromCsr.html).
# SPEC §3 caps RSA at 8192 bits: the portal verifies the CSR's signature, and that cost grows with the key.
ALLOWED_EC_CURVES = {ec.SECP256R1.name: "P-256", ec.SECP384R1.name: "P-384", ec.SECP521R1.name: "P-521"}
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192
# "Certificate signing algorithms supported by AWS IoT" (developer guide, X.509 client certificates):
# SHA256/384/512 with RSA or ECDSA. SHA-1 and MD5 are refused with a message the device can act on.
ACCEPTED_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
# OpenSSL writes the legacy label NEW CERTIFICATE REQUEST with some options and older versions; it is the
# same PKCS#10 request, and AWS is sent the standard label.
CSR_PEM_RE = re.compile(
    r"\A\s*-----BEGIN (?P<label>(?:NEW )?CERTIFICATE REQUEST)-----\r?\n"
    r"(?P<body>[A-Za-z0-9+/=\r\n]+)-----END (?P=label)-----\s*\Z"
)


def token_generate() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_generate_many(count: int) -> list[str]:
    """`count` tokens as `token_generate` makes them, from one read of the system's random source.

    TOKEN_BYTES is a multiple of 3, so base64 turns every TOKEN_BYTES of the read into the same 32
    characters, unpadded, that `token_urlsafe` makes of them alone: the text of the whole read, cut
    every 32 characters, is `count` independent tokens. A run of 100,000 otherwise asks the kernel
    100,000 times.
    """
    text = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES * count)).decode()
    size = TOKEN_BYTES // 3 * 4
    return [text[start : start + size] for start in range(0, len(text), size)]


def _keys() -> list[bytes]:
    return [key.encode() for key in [settings.CVM_TOKEN_HMAC_KEY, *settings.CVM_TOKEN_HMAC_KEY_FALLBACKS]]


def token_digest(token: str) -> str:
    """The digest stored for a token, always under the current key."""
    return hmac.new(_keys()[0], token.encode(), hashlib.sha256).hexdigest()


def token_digests(tokens: list[str]) -> list[str]:
    """`token_digest` of many tokens (a run of 100,000): the HMAC is keyed once and copied for each."""
    keyed = hmac.new(_keys()[0], digestmod=hashlib.sha256)
    digests = []
    for token in tokens:
        each = keyed.copy()
        each.update(token.encode())
        digests.append(each.hexdigest())
    return digests


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
    pem: str  # always labelled CERTIFICATE REQUEST, whatever label the device used
    key_description: str
    public_key_pem: str = ""  # SubjectPublicKeyInfo PEM of the key the device holds
    der: bytes = b""  # what a rotation proof's csr_sha256 is computed over


def _key_description(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        # Size first: verifying a signature with a huge key is the one costly step, and is never reached.
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise CsrInvalid(f"RSA key must be {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {key.key_size}")
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_EC_CURVES:
            raise CsrInvalid(f"EC key must be on P-256, P-384 or P-521, not {key.curve.name}")
        return f"EC-{key.curve.name}"
    raise CsrInvalid("key must be RSA (2048 to 8192 bits) or EC on P-256, P-384 or P-521")


def _check_signature_hash(csr: x509.CertificateSigningRequest) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - UnsupportedAlgorithm: RSA-PSS, Ed25519 ... none of which AWS IoT takes
        algorithm = None
    if not isinstance(algorithm, ACCEPTED_SIGNATURE_HASHES):
        name = algorithm.name.upper().replace("SHA", "SHA-") if algorithm is not None else "this algorithm"
        raise CsrInvalid(f"CSR is signed with {name}, which AWS IoT does not accept; sign it with SHA-256 or stronger")


def csr_validate(pem: str, *, serial: str) -> ValidatedCsr:
    """Check a PKCS#10 request as SPEC §3 requires; raise CsrInvalid with a message for the device.

    Returns the request re-labelled `CERTIFICATE REQUEST` (the legacy `NEW CERTIFICATE REQUEST` label is
    accepted). A refusal the device can fix (key size, curve, SHA-1 signature) says so.
    """
    if len(pem.encode()) > MAX_CSR_BYTES:
        raise CsrInvalid(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    # The regular expression bounds what reaches the ASN.1 parser to one well-formed PEM block.
    match = CSR_PEM_RE.match(pem)
    if match is None:
        raise CsrInvalid("CSR must be a single PEM 'CERTIFICATE REQUEST' block")
    body = match.group("body").replace("\r", "")
    normalised = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    # cryptography parses lazily: a request that loads can still fail on its key or subject, so all
    # of it is read here, before anything else looks at it.
    try:
        csr = x509.load_pem_x509_csr(normalised.encode())
        key = csr.public_key()
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:  # noqa: BLE001 - ValueError, InvalidVersion, UnsupportedAlgorithm ... all mean "unusable"
        raise CsrInvalid("CSR could not be parsed") from None
    description = _key_description(key)
    _check_signature_hash(csr)
    try:
        signature_valid = csr.is_signature_valid
    except Exception:  # noqa: BLE001 - a signature that cannot be checked is not a valid one
        signature_valid = False
    if not signature_valid:
        raise CsrInvalid("CSR signature is not valid")
    if len(common_names) != 1 or common_names[0].value != serial:
        raise CsrInvalid("CSR subject CN must equal the serial")
    return ValidatedCsr(
        pem=normalised,
        key_description=description,
        public_key_pem=key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        der=csr.public_bytes(serialization.Encoding.DER),
    )


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
