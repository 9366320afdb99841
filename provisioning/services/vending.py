"""Vending: a serial and its one-time token traded for an ACTIVE certificate, and recovery of a dead claim.

A vend claims the device (`token_issued` -> `issuing`) with a conditional UPDATE, commits, talks to
AWS, then records the outcome in a second transaction that only succeeds while the claim is still its
own. A claim left by a process that died mid-issuance is recovered once stale.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import aws
from ..audit import NewEvent, audit_append
from ..crypto import ValidatedCsr, amazon_root_ca_pem, certificate_fingerprint, token_matches
from ..models import AuditKind, Certificate, CertificateStatus, Device, DeviceAction, DeviceState, KeyOrigin
from ..prepared import insert
from ..proofs import same_public_key
from ..selectors import certificate_ids_of, device_get, refusals_in_window
from .common import DEVICE_ACTOR, SYSTEM_ACTOR, device_transition, events_record
from .webhooks import Subject

logger = logging.getLogger(__name__)

FAILURE_WINDOW = timedelta(hours=1)
BUSY_RETRY_AFTER = 2


class VendRefused(Exception):
    """Unknown serial, wrong, used or expired token, revoked device: the device is told nothing more."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VendRetryLater(Exception):
    """The request may succeed later; `status` is 409, 429 or 503 and `retry_after` is in seconds."""

    def __init__(self, status: int, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = max(1, retry_after)
        self.detail = detail


@dataclass(frozen=True)
class VendResult:
    serial: str
    thing_name: str
    certificate_id: str
    certificate_arn: str
    certificate_pem: str
    private_key_pem: str | None = field(repr=False)
    iot_endpoint: str
    root_ca_pem: str
    public_key_pem: str | None = None
    replayed: bool = False  # a lost answer given again (200), not a new certificate (201)
    rotate_after: datetime | None = None  # when the product wants the certificate rotated


def _refuse(serial: str, reason: str, client_address: str | None) -> VendRefused:
    with transaction.atomic():
        audit_append(
            kind=AuditKind.VEND_REFUSED,
            actor=DEVICE_ACTOR,
            serial=serial,
            client_address=client_address,
            data={"reason": reason},
        )
    logger.info("vend refused", extra={"serial": serial, "reason": reason})
    return VendRefused(reason)


def _lock_key(scope: str, key: str) -> str:
    return f"cvm:locked:{scope}:{key}"


def _locked_for(scope: str, key: str, now: datetime) -> int | None:
    """Seconds left on a lockout recorded in the cache, or None: a locked caller costs no database work."""
    return _seconds_left(cache.get(_lock_key(scope, key)), now)


def _seconds_left(until: float | None, now: datetime) -> int | None:
    if until is None or until <= now.timestamp():
        return None
    return math.ceil(until - now.timestamp())


def _serial_key(serial: str, device: Device | None) -> str:
    # A lockout belongs to the token it was earned against: a new token starts with a clean slate.
    issued = device.token_issued_at.timestamp() if device is not None and device.token_issued_at else 0
    return f"{serial}@{issued:.6f}"


def address_lockout_check(client_address: str | None, now: datetime) -> None:
    """429 while the address is locked out; reads the cache only. AddressLockoutMiddleware asks it before
    a device call's body is read; the services read the same entry in `_check_failure_limits`."""
    if client_address and (retry_after := _locked_for("address", client_address, now)):
        raise VendRetryLater(429, retry_after, "too many failed attempts; retry later")


def _check_failure_limits(serial: str, client_address: str | None, now: datetime, device: Device | None) -> None:
    """429 when the serial or the address has failed too often within the last hour.

    A serial's failures count only since its current token was issued: a device that looped on an
    expired token must not lock out the fresh one staff just gave it. Once over a limit, the lockout is
    kept in the cache until it lifts, and one `vend_throttled` event records it: a flood from a locked
    address is answered by AddressLockoutMiddleware without reading the database, one against a locked
    serial here after one read of the device's token fields (the lockout belongs to its current token),
    and neither writes.
    """
    # Both lockouts in one cache read. AddressLockoutMiddleware has answered a locked address already;
    # this is for an address locked since, and for callers that come another way.
    locks = {"serial": _lock_key("serial", _serial_key(serial, device))}
    if client_address:
        locks["address"] = _lock_key("address", client_address)
    found = cache.get_many(list(locks.values()))
    for scope in ("address", "serial"):
        if retry_after := _seconds_left(found.get(locks.get(scope, "")), now):
            raise VendRetryLater(429, retry_after, "too many failed attempts; retry later")
    window_start = now - FAILURE_WINDOW
    serial_since = window_start
    if device is not None and device.token_issued_at is not None:
        serial_since = max(window_start, device.token_issued_at)
    by_serial, by_address = refusals_in_window(
        since=window_start, serial_since=serial_since, serial=serial, client_address=client_address
    )
    for scope, key, window, limit in (
        ("serial", _serial_key(serial, device), by_serial, settings.CVM_FAILED_TOKENS_PER_SERIAL),
        ("address", client_address or "", by_address, settings.CVM_FAILED_TOKENS_PER_ADDRESS),
    ):
        if window.count >= limit:
            # The window slides: the limit lifts when the oldest failure in it is an hour old.
            until = (window.oldest or now) + FAILURE_WINDOW
            retry_after = math.ceil((until - now).total_seconds())
            if cache.add(_lock_key(scope, key), until.timestamp(), timeout=max(1, retry_after)):
                with transaction.atomic():
                    # Also a `device.locked_out` webhook event: the SIEM hears of the lockout once.
                    events_record(
                        [
                            NewEvent(
                                kind=AuditKind.VEND_THROTTLED,
                                actor=DEVICE_ACTOR,
                                serial=serial,
                                client_address=client_address,
                                data={"scope": scope, "failures": window.count},
                            )
                        ],
                        subjects={
                            serial: Subject(thing_name=device.thing_name, product=device.product.name)
                            if device is not None
                            else Subject()
                        },
                    )
            raise VendRetryLater(429, retry_after, "too many failed attempts; retry later")


def _refusal_reason(device: Device, token: str, now: datetime) -> str | None:
    """Why this token cannot start an issuance for this device, or None when it can."""
    matches = token_matches(token, device.token_digest)
    if device.state == DeviceState.REGISTERED:
        return "no_token_issued"
    if not matches:
        return "token_wrong"
    if device.state == DeviceState.ACTIVE:
        return "token_used"
    if device.state == DeviceState.REVOKED:
        return "device_revoked"
    if device.token_expires_at is None or device.token_expires_at <= now:
        return "token_expired"
    return None


def certificate_vend(*, serial: str, token: str, csr: ValidatedCsr | None, client_address: str | None) -> VendResult:
    """Trade a serial and its one-time token for an ACTIVE certificate attached to the device's thing."""
    now = timezone.now()
    # One read of the device (a statement written once, see prepared.py), the same for a known serial as
    # for an unknown one: a guess and a vend both start with it, and a vend needs nothing more.
    device = device_get(serial=serial)
    _check_failure_limits(serial, client_address, now, device)
    if device is None:
        token_matches(token, "")  # same work as for a known serial, so timing reveals nothing
        raise _refuse(serial, "unknown_serial", client_address)
    if device.state == DeviceState.ISSUING and claim_is_stale(device, now):
        try:
            claim_recover(device=device)
        except aws.AwsError as exc:
            # The dead issuance cannot be cleaned up while AWS does not answer; nothing else may start.
            raise VendRetryLater(503, exc.retry_after, "AWS IoT is unavailable; retry later") from None
        device = device_get(serial=serial)
        assert device is not None
    reason = _refusal_reason(device, token, now)
    if reason == "token_used" and csr is not None:
        replayed = _replay(device, csr, client_address, now)
        if replayed is not None:
            return replayed
    if reason is not None:
        raise _refuse(serial, reason, client_address)
    if device.state == DeviceState.ISSUING:
        _busy(device, client_address, now)
    try:
        # Before the claim: a vend the AWS IoT quota cannot take soon is turned away having cost no
        # database write and no AWS call, rather than half-way, with slots spent and a certificate to undo.
        aws.certificate_provision_admit(csr=csr is not None, thing_groups=tuple(device.product.thing_groups))
    except aws.AwsError as exc:
        raise VendRetryLater(503, exc.retry_after, "AWS IoT is busy; nothing was issued, retry later") from None

    claim_id = uuid.uuid4()
    claimed = device_transition(
        device.pk,
        action=DeviceAction.VEND,
        where={"token_digest": device.token_digest, "token_expires_at__gt": now},
        changes={"claim_id": claim_id, "claimed_at": now, "last_request_at": now},
        kind=AuditKind.VEND_CLAIMED,
        actor=DEVICE_ACTOR,
        client_address=client_address,
        data={"key_origin": KeyOrigin.CSR if csr else KeyOrigin.AWS},
        before=device,
    )
    if claimed is None:
        # Another request got there first: it is either still talking to AWS or has finished.
        current = device_get(serial=serial)
        if current is not None and current.state == DeviceState.ISSUING:
            _busy(current, client_address, now)
        raise _refuse(serial, "token_used", client_address)

    return _issue_claimed(device=claimed, claim_id=claim_id, csr=csr, client_address=client_address)


def thing_attributes(device: Device) -> dict[str, str]:
    """The attributes a device's thing carries in AWS IoT: the portal's two and the device's own."""
    return {**device.attributes, "serial": device.serial, "product": device.product.name}


def provision_shape(device: Device) -> dict[str, object]:
    """What the device's product asks of its thing and certificate (SPEC §5.1), as certificate_provision
    takes it."""
    product = device.product
    return {
        "attributes": thing_attributes(device),
        "policy_name": product.policy_name,
        "thing_type": product.thing_type,
        "thing_groups": tuple(product.thing_groups),
    }


def rotate_after(device: Device, issued_at: datetime) -> datetime | None:
    """When the product wants this certificate rotated, or None."""
    days = device.product.rotate_after_days
    return issued_at + timedelta(days=days) if days else None


def vend_result(device: Device, certificate: Certificate, *, replayed: bool) -> VendResult:
    """The answer for a certificate the portal already recorded (a lost answer, given again)."""
    return VendResult(
        serial=device.serial,
        thing_name=certificate.thing_name,
        certificate_id=certificate.certificate_id,
        certificate_arn=certificate.arn,
        certificate_pem=certificate.certificate_pem,
        private_key_pem=None,
        iot_endpoint=aws.iot_data_endpoint(),
        root_ca_pem=amazon_root_ca_pem(),
        replayed=replayed,
        rotate_after=rotate_after(device, certificate.issued_at),
    )


def _replay(device: Device, csr: ValidatedCsr, client_address: str | None, now: datetime) -> VendResult | None:
    """The answer a device lost, when it asks again with its used token and a CSR for the same key.

    Only for the device's current certificate, still ACTIVE, issued from a CSR within
    CVM_REPLAY_WINDOW_SECONDS: the certificate is public and useless without the CSR's private key,
    which never left the device. A server-generated key was never stored, so that answer is gone.
    """
    current = device.current_certificate
    if (
        not device.allows(DeviceAction.REPLAY)
        or current is None
        or current.status != CertificateStatus.ACTIVE
        or current.key_origin != KeyOrigin.CSR
        or not current.certificate_pem
        or current.issued_at < now - timedelta(seconds=settings.CVM_REPLAY_WINDOW_SECONDS)
        or not same_public_key(current.public_key_pem, csr.public_key_pem)
    ):
        return None
    with transaction.atomic():
        audit_append(
            kind=AuditKind.CERTIFICATE_REPLAYED,
            actor=DEVICE_ACTOR,
            serial=device.serial,
            client_address=client_address,
            data={"certificate_id": current.certificate_id},
        )
    return vend_result(device, current, replayed=True)


def claim_retry_after(device: Device, now: datetime) -> int:
    """Seconds until the device's claim is either released or old enough to be recovered.

    A live issuance ends in well under that time, and its token is then spent (or, with a CSR, its
    answer can be fetched again); a claim left by a dead process can be taken over only once stale, so
    advising an earlier retry would only earn another 409.
    """
    if device.claimed_at is None:
        return BUSY_RETRY_AFTER
    stale_at = device.claimed_at + timedelta(seconds=settings.CVM_CLAIM_TIMEOUT_SECONDS)
    # `now` was read when this call began; a claim made since by a concurrent call is younger than that,
    # which must not advise more than the timeout itself.
    left = min(settings.CVM_CLAIM_TIMEOUT_SECONDS, math.ceil((stale_at - now).total_seconds()))
    return max(BUSY_RETRY_AFTER, left)


def _busy(device: Device, client_address: str | None, now: datetime) -> None:
    with transaction.atomic():
        audit_append(kind=AuditKind.VEND_BUSY, actor=DEVICE_ACTOR, serial=device.serial, client_address=client_address)
    raise VendRetryLater(
        409, claim_retry_after(device, now), "a request for this device is being served; retry after Retry-After"
    )


def _release_claim(
    device: Device,
    claim_id: uuid.UUID,
    *,
    client_address: str | None,
    cleanup_pending: bool = False,
    **data: object,
) -> None:
    device_transition(
        device.pk,
        action=DeviceAction.RELEASE,
        where={"claim_id": claim_id},
        # Never clears a flag set earlier: only a vend that removed the leftovers may do that.
        changes={"claim_id": None, "claimed_at": None, **({"aws_cleanup_pending": True} if cleanup_pending else {})},
        kind=AuditKind.VEND_FAILED,
        actor=DEVICE_ACTOR,
        client_address=client_address,
        data=data,
    )


def _issue_claimed(
    *, device: Device, claim_id: uuid.UUID, csr: ValidatedCsr | None, client_address: str | None
) -> VendResult:
    key_origin = KeyOrigin.CSR if csr else KeyOrigin.AWS
    thing_name = device.thing_name
    shape = provision_shape(device)
    policy_name = str(shape["policy_name"])
    known = certificate_ids_of(device_pk=device.pk)
    try:
        new = aws.certificate_provision(
            thing_name=thing_name,
            csr_pem=csr.pem if csr else None,
            known_certificate_ids=known,
            **shape,  # type: ignore[arg-type]
        )
    except aws.AwsError as exc:
        _release_claim(
            device,
            claim_id,
            client_address=client_address,
            cleanup_pending=exc.leftover_certificate_id is not None,
            reason="aws_error",
            operation=exc.operation,
            code=exc.code,
            error_kind=exc.kind,
            key_origin=key_origin,
        )
        raise VendRetryLater(503, exc.retry_after, "AWS IoT is unavailable; nothing was issued, retry later") from None
    except BaseException:
        _release_claim(device, claim_id, client_address=client_address, reason="internal_error", key_origin=key_origin)
        raise

    try:
        recorded = _record_issued(
            device=device,
            claim_id=claim_id,
            new=new,
            key_origin=key_origin,
            client_address=client_address,
            public_key_pem=csr.public_key_pem if csr else (new.public_key_pem or ""),
        )
    except BaseException:
        # The database could not record the certificate: withdraw it from AWS so no ACTIVE certificate
        # exists that the source of truth does not know about.
        removed = aws.certificate_discard_quietly(new, thing_name=thing_name, policy_name=policy_name)
        _release_claim(
            device,
            claim_id,
            client_address=client_address,
            cleanup_pending=not removed,
            reason="record_failed",
            key_origin=key_origin,
        )
        raise
    if not recorded:
        # Our claim was recovered as stale while AWS was slow; the certificate must not survive.
        aws.certificate_discard_quietly(new, thing_name=thing_name, policy_name=policy_name)
        raise VendRetryLater(503, BUSY_RETRY_AFTER, "issuance took too long; nothing was issued, retry")
    return VendResult(
        serial=device.serial,
        thing_name=thing_name,
        certificate_id=new.certificate_id,
        certificate_arn=new.arn,
        certificate_pem=new.certificate_pem,
        private_key_pem=new.private_key_pem,
        iot_endpoint=aws.iot_data_endpoint(),
        root_ca_pem=amazon_root_ca_pem(),
        public_key_pem=new.public_key_pem,
        rotate_after=rotate_after(device, timezone.now()),
    )


def _record_issued(
    *,
    device: Device,
    claim_id: uuid.UUID,
    new: aws.NewCertificate,
    key_origin: str,
    client_address: str | None,
    public_key_pem: str,
) -> bool:
    now = timezone.now()
    try:
        return _record_issued_once(
            device=device,
            claim_id=claim_id,
            new=new,
            key_origin=key_origin,
            client_address=client_address,
            now=now,
            public_key_pem=public_key_pem,
        )
    except IntegrityError:
        # Only possible when our claim was recovered and another request issued meanwhile: the device
        # already has its one active certificate, and ours must not survive.
        return False


def _record_issued_once(
    *,
    device: Device,
    claim_id: uuid.UUID,
    new: aws.NewCertificate,
    key_origin: str,
    client_address: str | None,
    now: datetime,
    public_key_pem: str,
) -> bool:
    with transaction.atomic():
        certificate = Certificate(
            public_key_pem=public_key_pem,
            certificate_pem=new.certificate_pem,
            policy_name=device.product.policy_name,
            device=device,
            certificate_id=new.certificate_id,
            arn=new.arn,
            fingerprint_sha256=certificate_fingerprint(new.certificate_pem),
            key_origin=key_origin,
            thing_name=device.thing_name,
            issued_at=now,
            issued_to_address=client_address,
        )
        insert(certificate)
        owned = device_transition(
            device.pk,
            action=DeviceAction.ISSUE,
            where={"claim_id": claim_id},
            changes={
                "claim_id": None,
                "claimed_at": None,
                "aws_cleanup_pending": False,
                "current_certificate": certificate,
            },
            kind=AuditKind.CERTIFICATE_ISSUED,
            actor=DEVICE_ACTOR,
            client_address=client_address,
            data={
                "certificate_id": new.certificate_id,
                "fingerprint_sha256": certificate.fingerprint_sha256,
                "key_origin": key_origin,
                **({"strays_revoked": list(new.strays_revoked)} if new.strays_revoked else {}),
                **({"strays_discarded": list(new.strays_discarded)} if new.strays_discarded else {}),
            },
        )
        if owned is None:
            # The claim was recovered meanwhile: roll the certificate row back with the transaction.
            transaction.set_rollback(True)
            return False
    return True


def claim_is_stale(device: Device, now: datetime) -> bool:
    timeout = timedelta(seconds=settings.CVM_CLAIM_TIMEOUT_SECONDS)
    return device.claimed_at is None or device.claimed_at <= now - timeout


def unknown_thing_certificates(device: Device) -> list[aws.CertificateInfo]:
    """Certificates AWS IoT holds on the device's thing that the database never recorded."""
    known = certificate_ids_of(device_pk=device.pk)
    return [info for info in aws.thing_certificates(thing_name=device.thing_name) if info.certificate_id not in known]


def _discard_unknown_certificates(device: Device) -> list[str]:
    """Deactivate, detach and delete what the thing holds that the database never recorded."""
    discarded = []
    for info in unknown_thing_certificates(device):
        aws.certificate_discard(
            certificate_id=info.certificate_id,
            certificate_arn=info.arn,
            thing_name=device.thing_name,
            # An unrecorded certificate's policy is unknown: the product's is the one an issuance attaches.
            policy_name=device.product.policy_name,
        )
        discarded.append(info.certificate_id)
    return discarded


def claim_recover(*, device: Device, actor: str = SYSTEM_ACTOR) -> bool:
    """Return a device whose issuance crashed to `token_issued`, removing what AWS was left holding.

    Only a stale claim is touched; if its owner is merely slow, its own final step notices the claim is
    gone and withdraws its certificate.
    """
    if not device.allows(DeviceAction.RECOVER) or not claim_is_stale(device, timezone.now()):
        return False
    discarded = _discard_unknown_certificates(device)
    released = device_transition(
        device.pk,
        action=DeviceAction.RECOVER,
        where={"claim_id": device.claim_id},
        changes={"claim_id": None, "claimed_at": None, "aws_cleanup_pending": False},
        kind=AuditKind.CLAIM_RECOVERED,
        actor=actor,
        data={"discarded_certificates": discarded},
    )
    if released:
        logger.warning("stale claim recovered", extra={"serial": device.serial, "discarded": len(discarded)})
    return released is not None
