"""Proof of possession for rotation (SPEC §3.2): a JWT signed with the device's private key.

Verified with PyJWT against the public key the portal recorded when it issued the certificate (never
against the certificate AWS returns: the key is what the device proves it holds). JWS is not written by
hand here: signature encodings (ECDSA's raw r||s), algorithm confusion and claim checks are PyJWT's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROTATE_AUDIENCE = "cvm-rotate"
CONFIRM_AUDIENCE = "cvm-confirm"
IAT_TOLERANCE_SECONDS = 300
JTI_MIN, JTI_MAX = 16, 128
MAX_PROOF_BYTES = 8 * 1024

# The algorithm follows from the recorded key, never from the token's header: a proof for an EC P-256
# key is ES256 and nothing else, so no "alg" a caller chooses can change how it is checked.
_EC_ALGORITHMS = {"secp256r1": ["ES256"], "secp384r1": ["ES384"], "secp521r1": ["ES512"]}
_RSA_ALGORITHMS = ["RS256", "PS256"]


class ProofInvalid(Exception):
    """The proof does not prove what it must; `reason` is for the audit log, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Proof:
    jti: str
    iat: int
    csr_sha256: str | None


def public_key_pem(key: Any) -> str:
    """A public key as SubjectPublicKeyInfo PEM, the form the portal records."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def same_public_key(a_pem: str, b_pem: str) -> bool:
    """Whether two PEM public keys are the same key (compared as DER, whatever the PEM's line breaks)."""
    try:
        a = serialization.load_pem_public_key(a_pem.encode())
        b = serialization.load_pem_public_key(b_pem.encode())
    except ValueError:
        return False
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(*der) == b.public_bytes(*der)


def _algorithms(key: Any) -> list[str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS.get(key.curve.name, [])
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    return []


def csr_sha256(csr_der: bytes) -> str:
    return hashlib.sha256(csr_der).hexdigest()


def proof_verify(
    token: str, *, public_key_pem: str, serial: str, audience: str, now: datetime, csr_der: bytes | None = None
) -> Proof:
    """Check a proof: signature by the recorded key, `sub` = serial, `aud`, `iat` within 300 s of `now`,
    `jti` of 16-128 characters and, for a rotation, `csr_sha256` = SHA-256 of the CSR's DER.

    Returns the proof's claims; raises ProofInvalid (with the reason, for the audit log) otherwise.
    Whether `jti` was used before is the caller's to check: it is per device, in the database.
    """
    if len(token) > MAX_PROOF_BYTES:
        raise ProofInvalid("proof_too_large")
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError:
        raise ProofInvalid("no_recorded_key") from None
    algorithms = _algorithms(key)
    if not algorithms:
        raise ProofInvalid("unsupported_key")
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=algorithms,
            audience=audience,
            options={"require": ["sub", "aud", "iat", "jti"], "verify_iat": False},
        )
    except jwt.InvalidAudienceError:
        raise ProofInvalid("wrong_audience") from None
    except jwt.InvalidSignatureError:
        raise ProofInvalid("bad_signature") from None
    except jwt.InvalidAlgorithmError:
        raise ProofInvalid("wrong_algorithm") from None
    except jwt.PyJWTError:
        raise ProofInvalid("malformed") from None
    if claims.get("sub") != serial:
        raise ProofInvalid("wrong_subject")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or abs(now.timestamp() - iat) > IAT_TOLERANCE_SECONDS:
        raise ProofInvalid("stale_iat")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not JTI_MIN <= len(jti) <= JTI_MAX:
        raise ProofInvalid("bad_jti")
    bound = claims.get("csr_sha256")
    if csr_der is not None and (not isinstance(bound, str) or bound != csr_sha256(csr_der)):
        raise ProofInvalid("wrong_csr")
    return Proof(jti=jti, iat=int(iat), csr_sha256=bound if isinstance(bound, str) else None)
