"""Rotation with proof of possession (SPEC §3.2): a device trades its certificate for one on a new key.

The device proves it holds the current private key with a JWT signed by it (provisioning/proofs.py).
The new certificate is created, attached and activated like a vend's (activate last, compensate on
failure) while the current one stays ACTIVE: both work until the device proves, with the new key, that
it has the new certificate (`rotation_confirm`). Then the old one is set REVOKED and detached. A rotation
never confirmed is rolled back after CVM_ROTATION_GRACE_SECONDS (`rotations_expire`).

A rotation holds the device's claim (`claim_id`) while it talks to AWS, as a vend does, so concurrent
rotations of one device produce one pending certificate; the device's state stays `active` throughout.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import aws, metrics
from ..audit import audit_append
from ..crypto import ValidatedCsr, certificate_fingerprint
from ..models import AuditKind, Certificate, CertificateStatus, Device, DeviceAction, KeyOrigin, ProofJti
from ..proofs import CONFIRM_AUDIENCE, ROTATE_AUDIENCE, ProofInvalid, proof_verify, same_public_key
from ..selectors import certificate_ids_of, device_get
from .common import DEVICE_ACTOR, SYSTEM_ACTOR, ServiceError, device_transition
from .vending import (
    BUSY_RETRY_AFTER,
    VendResult,
    VendRetryLater,
    _check_failure_limits,
    _discard_unknown_certificates,
    claim_is_stale,
    claim_retry_after,
    provision_shape,
    vend_result,
)

logger = logging.getLogger(__name__)

JTI_KEEP = timedelta(minutes=15)  # longer than any proof stays fresh (iat within 300 s either way)


class ProofRefused(Exception):
    """Unknown serial, inactive device, bad proof or reused jti: the caller is told nothing more."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RotationInvalid(ServiceError):
    """A request the device can fix (a CSR for the key it already has)."""


@dataclass(frozen=True)
class RotationResult:
    certificate: VendResult
    previous_certificate_id: str
    confirm_by: datetime


@dataclass(frozen=True)
class ConfirmResult:
    serial: str
    certificate_id: str
    revoked_certificate_id: str


def _refuse(serial: str, reason: str, client_address: str | None) -> ProofRefused:
    # Counted by the same per-serial and per-address limits as failed tokens (selectors.refusals_in_window).
    with transaction.atomic():
        audit_append(
            kind=AuditKind.ROTATE_REFUSED,
            actor=DEVICE_ACTOR,
            serial=serial,
            client_address=client_address,
            data={"reason": reason},
        )
    logger.info("rotation refused", extra={"serial": serial, "reason": reason})
    return ProofRefused(reason)


def _jti_spend(device: Device, jti: str, now: datetime) -> bool:
    """Record the proof's jti for the device; False when it was used before."""
    try:
        with transaction.atomic():
            ProofJti.objects.create(device=device, jti=jti, used_at=now)
    except IntegrityError:
        return False
    return True


def confirm_by(pending: Certificate) -> datetime:
    return pending.issued_at + timedelta(seconds=settings.CVM_ROTATION_GRACE_SECONDS)


def _rotation_result(device: Device, pending: Certificate, current: Certificate, *, replayed: bool) -> RotationResult:
    return RotationResult(
        certificate=vend_result(device, pending, replayed=replayed),
        previous_certificate_id=current.certificate_id,
        confirm_by=confirm_by(pending),
    )


def certificate_rotate(*, serial: str, csr: ValidatedCsr, proof: str, client_address: str | None) -> RotationResult:
    """Issue a certificate for the CSR's new key, proven by the current key; it stays pending until confirmed.

    Raises ProofRefused (403), RotationInvalid (400), VendRetryLater (409, 429, 503).
    """
    now = timezone.now()
    device = device_get(serial=serial)
    _check_failure_limits(serial, client_address, now, device)
    if device is None or not device.allows(DeviceAction.ROTATE) or device.current_certificate is None:
        raise _refuse(serial, "not_active" if device else "unknown_serial", client_address)
    current = device.current_certificate
    try:
        claims = proof_verify(
            proof,
            public_key_pem=current.public_key_pem,
            serial=serial,
            audience=ROTATE_AUDIENCE,
            now=now,
            csr_der=csr.der,
        )
    except ProofInvalid as exc:
        raise _refuse(serial, exc.reason, client_address) from None
    if same_public_key(csr.public_key_pem, current.public_key_pem):
        raise RotationInvalid("the CSR is for the key the device already has; a rotation needs a new key")

    pending = device.pending_certificate
    if pending is not None and same_public_key(csr.public_key_pem, pending.public_key_pem):
        # A lost answer: the same new key asks again while its rotation is pending.
        spent = _jti_spend(device, claims.jti, now)
        if not spent and not ProofJti.objects.filter(device=device, jti=claims.jti, certificate=pending).exists():
            raise _refuse(serial, "jti_reused", client_address)
        with transaction.atomic():
            audit_append(
                kind=AuditKind.ROTATION_REPLAYED,
                actor=DEVICE_ACTOR,
                serial=serial,
                client_address=client_address,
                data={"certificate_id": pending.certificate_id},
            )
        metrics.ROTATIONS.labels("replayed").inc()
        return _rotation_result(device, pending, current, replayed=True)
    if not _jti_spend(device, claims.jti, now):
        raise _refuse(serial, "jti_reused", client_address)

    claim_id = uuid.uuid4()
    claimed = _claim(
        device,
        claim_id,
        now,
        action=DeviceAction.ROTATE,
        kind=AuditKind.ROTATION_STARTED,
        actor=DEVICE_ACTOR,
        client_address=client_address,
        data={"previous_certificate_id": current.certificate_id, "key": csr.key_description},
    )
    metrics.ROTATIONS.labels("started").inc()
    return _issue(device=claimed, claim_id=claim_id, csr=csr, jti=claims.jti, client_address=client_address)


def _claim(
    device: Device,
    claim_id: uuid.UUID,
    now: datetime,
    *,
    action: str,
    kind: str,
    actor: str,
    client_address: str | None = None,
    data: dict[str, object] | None = None,
) -> Device:
    """Take the device's claim while AWS is called for it (rotate, confirm, roll back), recovering one a
    dead process left; VendRetryLater(409) while another request holds it.

    The claim serialises every certificate change of an active device: a confirm cannot revoke the
    current certificate while a roll-back removes the pending one, nor two rotations both issue.
    """
    if device.claim_id is not None and claim_is_stale(device, now):
        rotation_claim_recover(device=device)
    claimed = device_transition(
        device.pk,
        action=action,
        where={
            "claim_id__isnull": True,
            "current_certificate": device.current_certificate,
            "pending_certificate": device.pending_certificate,
        },
        changes={"claim_id": claim_id, "claimed_at": now, "last_request_at": now},
        kind=kind,
        actor=actor,
        client_address=client_address,
        data=data,
        before=device,
    )
    if claimed is None:
        latest = device_get(serial=device.serial)
        retry_after = claim_retry_after(latest, now) if latest is not None else BUSY_RETRY_AFTER
        raise VendRetryLater(409, retry_after, "a request for this device is being served; retry after Retry-After")
    return claimed


def _release(
    device: Device,
    claim_id: uuid.UUID,
    *,
    client_address: str | None,
    kind: str = AuditKind.ROTATION_FAILED,
    actor: str = DEVICE_ACTOR,
    **data: object,
) -> None:
    device_transition(
        device.pk,
        action=DeviceAction.ROTATE,
        where={"claim_id": claim_id},
        changes={"claim_id": None, "claimed_at": None},
        kind=kind,
        actor=actor,
        client_address=client_address,
        data=data,
    )


def _issue(
    *, device: Device, claim_id: uuid.UUID, csr: ValidatedCsr, jti: str, client_address: str | None
) -> RotationResult:
    current = device.current_certificate
    assert current is not None
    replaced = device.pending_certificate
    shape = provision_shape(device)
    policy_name = str(shape["policy_name"])
    known = certificate_ids_of(device_pk=device.pk)
    try:
        # Everything else the thing holds (a pending certificate this rotation replaces, strays) is
        # revoked before the new certificate is activated; the current one stays ACTIVE.
        new = aws.certificate_provision(
            thing_name=device.thing_name,
            csr_pem=csr.pem,
            known_certificate_ids=known,
            keep_certificate_ids=frozenset({current.certificate_id}),
            **shape,  # type: ignore[arg-type]
        )
    except aws.AwsError as exc:
        _release(
            device, claim_id, client_address=client_address, operation=exc.operation, code=exc.code, error_kind=exc.kind
        )
        raise VendRetryLater(503, exc.retry_after, "AWS IoT is unavailable; nothing was issued, retry later") from None
    except BaseException:
        _release(device, claim_id, client_address=client_address, reason="internal_error")
        raise

    now = timezone.now()
    try:
        with transaction.atomic():
            pending = Certificate.objects.create(
                device=device,
                certificate_id=new.certificate_id,
                arn=new.arn,
                fingerprint_sha256=certificate_fingerprint(new.certificate_pem),
                key_origin=KeyOrigin.CSR,
                status=CertificateStatus.PENDING,
                thing_name=device.thing_name,
                issued_at=now,
                issued_to_address=client_address,
                public_key_pem=csr.public_key_pem,
                certificate_pem=new.certificate_pem,
                policy_name=policy_name,
                previous_certificate=current,
            )
            if replaced is not None:
                Certificate.objects.filter(pk=replaced.pk, status=CertificateStatus.PENDING).update(
                    status=CertificateStatus.REVOKED,
                    revoked_at=now,
                    revoked_by=DEVICE_ACTOR,
                    revoked_reason="replaced by a newer rotation",
                )
            ProofJti.objects.filter(device=device, jti=jti).update(certificate=pending)
            recorded = device_transition(
                device.pk,
                action=DeviceAction.ROTATE,
                where={"claim_id": claim_id, "current_certificate": current},
                changes={"claim_id": None, "claimed_at": None, "pending_certificate": pending},
                kind=AuditKind.ROTATION_ISSUED,
                actor=DEVICE_ACTOR,
                client_address=client_address,
                data={
                    "certificate_id": new.certificate_id,
                    "previous_certificate_id": current.certificate_id,
                    "fingerprint_sha256": pending.fingerprint_sha256,
                    **({"replaced_certificate_id": replaced.certificate_id} if replaced else {}),
                    **({"strays_revoked": list(new.strays_revoked)} if new.strays_revoked else {}),
                },
            )
            if recorded is None:
                transaction.set_rollback(True)
    except BaseException:
        removed = aws.certificate_discard_quietly(new, thing_name=device.thing_name, policy_name=policy_name)
        _release(device, claim_id, client_address=client_address, reason="record_failed", leftover=not removed)
        raise
    if recorded is None:
        # The claim was recovered as stale while AWS was slow: this certificate must not survive.
        aws.certificate_discard_quietly(new, thing_name=device.thing_name, policy_name=policy_name)
        raise VendRetryLater(503, BUSY_RETRY_AFTER, "rotation took too long; nothing was issued, retry")
    return _rotation_result(recorded, pending, current, replayed=False)


def rotation_claim_recover(*, device: Device, actor: str = SYSTEM_ACTOR) -> bool:
    """Release a rotation's claim left by a dead process, removing the certificate it may have created."""
    if not claim_is_stale(device, timezone.now()):
        return False
    discarded = _discard_unknown_certificates(device)
    released = device_transition(
        device.pk,
        action=DeviceAction.ROTATE,
        where={"claim_id": device.claim_id},
        changes={"claim_id": None, "claimed_at": None},
        kind=AuditKind.CLAIM_RECOVERED,
        actor=actor,
        data={"discarded_certificates": discarded},
    )
    return released is not None


def rotation_confirm(*, serial: str, proof: str, client_address: str | None) -> ConfirmResult:
    """Make the pending certificate current, proven by its key; the previous one is set REVOKED and detached.

    Confirming twice answers the same. Raises ProofRefused (403), VendRetryLater (429, 503).
    """
    now = timezone.now()
    device = device_get(serial=serial)
    _check_failure_limits(serial, client_address, now, device)
    if device is None or not device.allows(DeviceAction.CONFIRM) or device.current_certificate is None:
        raise _refuse(serial, "not_active" if device else "unknown_serial", client_address)
    pending, current = device.pending_certificate, device.current_certificate
    if pending is None:
        # Nothing pending: a confirm asked again after it succeeded is signed by the now-current key.
        previous = current.previous_certificate
        try:
            proof_verify(
                proof, public_key_pem=current.public_key_pem, serial=serial, audience=CONFIRM_AUDIENCE, now=now
            )
        except ProofInvalid as exc:
            raise _refuse(serial, exc.reason, client_address) from None
        if previous is None or previous.status != CertificateStatus.REVOKED:
            raise _refuse(serial, "nothing_pending", client_address)
        return ConfirmResult(serial, current.certificate_id, previous.certificate_id)
    try:
        claims = proof_verify(
            proof, public_key_pem=pending.public_key_pem, serial=serial, audience=CONFIRM_AUDIENCE, now=now
        )
    except ProofInvalid as exc:
        raise _refuse(serial, exc.reason, client_address) from None
    if not _jti_spend(device, claims.jti, now):
        raise _refuse(serial, "jti_reused", client_address)

    confirmed = _confirm(device, actor=DEVICE_ACTOR, client_address=client_address)
    if confirmed is None:
        # Staff revoked the device meanwhile (a revoke does not wait for the claim): nothing to confirm.
        raise _refuse(serial, "changed_meanwhile", client_address)
    return confirmed


def _confirm(device: Device, *, actor: str, client_address: str | None) -> ConfirmResult | None:
    """Revoke and detach the current certificate in AWS, then make the pending one current in the database."""
    current, pending = device.current_certificate, device.pending_certificate
    assert current is not None
    assert pending is not None
    claim_id = uuid.uuid4()
    _claim(
        device,
        claim_id,
        timezone.now(),
        action=DeviceAction.CONFIRM,
        kind=AuditKind.ROTATION_STEP_STARTED,
        actor=actor,
        client_address=client_address,
        data={"step": "confirm", "certificate_id": pending.certificate_id},
    )
    # AWS first: the old certificate stops working whatever happens next; repeating it is harmless.
    try:
        aws.certificate_revoke(
            certificate_id=current.certificate_id,
            certificate_arn=current.arn,
            thing_name=current.thing_name,
            policy_name=current.attached_policy,
        )
    except aws.AwsError as exc:
        _release(device, claim_id, client_address=client_address, actor=actor, step="confirm", code=exc.code)
        raise VendRetryLater(503, exc.retry_after, "AWS IoT is unavailable; nothing changed, retry later") from None
    now = timezone.now()
    with transaction.atomic():
        # The old one first: the database allows one ACTIVE certificate per device at any moment.
        Certificate.objects.filter(pk=current.pk).update(
            status=CertificateStatus.REVOKED, revoked_at=now, revoked_by=actor, revoked_reason="rotated"
        )
        Certificate.objects.filter(pk=pending.pk).update(status=CertificateStatus.ACTIVE)
        confirmed = device_transition(
            device.pk,
            action=DeviceAction.CONFIRM,
            where={"claim_id": claim_id, "current_certificate": current, "pending_certificate": pending},
            changes={"current_certificate": pending, "pending_certificate": None, "claim_id": None, "claimed_at": None},
            kind=AuditKind.ROTATION_CONFIRMED,
            actor=actor,
            client_address=client_address,
            data={"certificate_id": pending.certificate_id, "revoked_certificate_id": current.certificate_id},
        )
        if confirmed is None:
            transaction.set_rollback(True)
            return None
    metrics.ROTATIONS.labels("confirmed").inc()
    return ConfirmResult(device.serial, pending.certificate_id, current.certificate_id)


def rotation_complete(*, device: Device, actor: str) -> bool:
    """Finish a confirmation that stopped half-way (the old certificate already REVOKED in AWS): reconcile."""
    if device.pending_certificate is None or device.current_certificate is None:
        return False
    return _confirm(device, actor=actor, client_address=None) is not None


def rotation_rollback(*, device: Device, actor: str, reason: str) -> bool:
    """Revoke the device's pending certificate (REVOKED, detached); the current one stays. False if none."""
    pending = device.pending_certificate
    if pending is None:
        return False
    claim_id = uuid.uuid4()
    _claim(
        device,
        claim_id,
        timezone.now(),
        action=DeviceAction.ROLLBACK,
        kind=AuditKind.ROTATION_STEP_STARTED,
        actor=actor,
        data={"step": "rollback", "certificate_id": pending.certificate_id},
    )
    try:
        aws.certificate_revoke(
            certificate_id=pending.certificate_id,
            certificate_arn=pending.arn,
            thing_name=pending.thing_name,
            policy_name=pending.attached_policy,
        )
    except aws.AwsError as exc:
        _release(device, claim_id, client_address=None, actor=actor, step="rollback", code=exc.code)
        raise
    with transaction.atomic():
        Certificate.objects.filter(pk=pending.pk, status=CertificateStatus.PENDING).update(
            status=CertificateStatus.REVOKED, revoked_at=timezone.now(), revoked_by=actor, revoked_reason=reason[:255]
        )
        rolled_back = device_transition(
            device.pk,
            action=DeviceAction.ROLLBACK,
            where={"pending_certificate": pending, "claim_id": claim_id},
            changes={"pending_certificate": None, "claim_id": None, "claimed_at": None},
            kind=AuditKind.ROTATION_ROLLED_BACK,
            actor=actor,
            data={"certificate_id": pending.certificate_id, "reason": reason[:255]},
        )
        if rolled_back is None:
            transaction.set_rollback(True)
            return False
    metrics.ROTATIONS.labels("rolled_back").inc()
    return True


@dataclass(frozen=True)
class ExpiryReport:
    rolled_back: list[str]
    failed: dict[str, str]


def rotations_expire(*, now: datetime | None = None) -> ExpiryReport:
    """Roll back every rotation left unconfirmed for CVM_ROTATION_GRACE_SECONDS; idempotent, for cron."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CVM_ROTATION_GRACE_SECONDS)
    report = ExpiryReport(rolled_back=[], failed={})
    due = Device.objects.select_related("product", "current_certificate", "pending_certificate").filter(
        pending_certificate__issued_at__lte=cutoff
    )
    for device in due.order_by("serial").iterator(chunk_size=500):
        try:
            if rotation_rollback(device=device, actor=SYSTEM_ACTOR, reason="rotation not confirmed in time"):
                report.rolled_back.append(device.serial)
        except aws.AwsError as exc:
            report.failed[device.serial] = f"{exc.operation}: {exc.code}"
        except VendRetryLater:
            report.failed[device.serial] = "busy: a request for the device is being served; tried again next run"
    # A jti only matters while a proof carrying it could still be fresh, or while it names a pending
    # rotation (a lost answer is fetched again with it).
    ProofJti.objects.filter(used_at__lt=now - JTI_KEEP).exclude(certificate__status=CertificateStatus.PENDING).delete()
    return report
