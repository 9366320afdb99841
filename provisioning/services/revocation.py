"""Revoke and reset: staff take a certificate away, and give a device a new start with a new token."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from .. import aws
from ..crypto import token_digest, token_generate
from ..models import AuditKind, Certificate, CertificateStatus, Device, DeviceAction, DeviceState
from ..selectors import device_get
from ..validators import SERIAL_RE
from .common import (
    BatchOutcome,
    DeviceNotEligible,
    IssuedToken,
    ServiceError,
    aws_failure_advice,
    device_transition,
    issuing_advice,
)
from .tokens import token_check, token_ttl


def device_revoke(*, serial: str, reason: str, actor: str) -> Device:
    """Revoke the device's certificate in AWS IoT (REVOKED, detached), then in the database."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("a reason is required to revoke a device")
    device = device_get(serial=serial)
    if device is None:
        raise ServiceError(f"unknown serial {serial}")
    revoke_check(device)
    certificate, pending = device.current_certificate, device.pending_certificate
    # AWS first: once this returns the certificates no longer work, whatever happens next. Repeating it
    # after a failure is harmless, so a retry of the whole revoke is always safe. A certificate pending
    # in a rotation goes too: it belongs to the same device.
    for revoked_certificate in [certificate, *([pending] if pending else [])]:
        aws.certificate_revoke(
            certificate_id=revoked_certificate.certificate_id,
            certificate_arn=revoked_certificate.arn,
            thing_name=revoked_certificate.thing_name,
            policy_name=revoked_certificate.attached_policy,
        )
    with transaction.atomic():
        Certificate.objects.filter(pk__in=[c.pk for c in (certificate, pending) if c is not None]).update(
            status=CertificateStatus.REVOKED, revoked_at=timezone.now(), revoked_by=actor, revoked_reason=reason[:255]
        )
        revoked = device_transition(
            device.pk,
            action=DeviceAction.REVOKE,
            where={"current_certificate": certificate, "pending_certificate": pending},
            changes={"pending_certificate": None},
            kind=AuditKind.DEVICE_REVOKED,
            actor=actor,
            data={
                "certificate_id": certificate.certificate_id,
                "reason": reason[:255],
                **({"pending_certificate_id": pending.certificate_id} if pending else {}),
            },
        )
        if revoked is None:  # raising rolls the certificate row back with the transaction
            raise DeviceNotEligible(
                f"device {serial} changed while it was being revoked; look at it again before retrying"
            )
        return revoked


def device_reset(*, serial: str, actor: str, reason: str = "reset", ttl_days: int | None = None) -> IssuedToken:
    """Revoke the current certificate if there is one, then give the device a new token."""
    ttl = token_ttl(ttl_days)  # before anything changes: a bad lifetime must not leave a revoked device
    device = device_get(serial=serial)
    if device is None:
        raise ServiceError(f"unknown serial {serial}")
    reset_check(device)
    if device.allows(DeviceAction.REVOKE):
        device = device_revoke(serial=serial, reason=f"reset: {reason}", actor=actor)
    token = token_generate()
    now = timezone.now()
    expires_at = now + timedelta(days=ttl)
    reset = device_transition(
        device.pk,
        action=DeviceAction.RESET,
        changes={
            "token_digest": token_digest(token),
            "token_expires_at": expires_at,
            "token_issued_at": now,
            "current_certificate": None,
        },
        kind=AuditKind.DEVICE_RESET,
        actor=actor,
        data={"reason": reason[:255], "expires_at": expires_at},
    )
    if reset is None:
        raise DeviceNotEligible(f"device {serial} changed while it was being reset; look at it again before retrying")
    return IssuedToken(serial=serial, token=token, expires_at=expires_at)


def reset_refusal_advice(serial: str, state: str) -> str:
    if state == DeviceState.ISSUING:
        return issuing_advice(serial, "reset it")
    return (
        f"device {serial} is {state}; reset applies to active or revoked devices "
        "(issue_tokens gives a device without a certificate a new token)"
    )


def revoke_refusal_advice(serial: str, state: str) -> str:
    if state == DeviceState.ISSUING:
        return issuing_advice(serial, "revoke it")
    return f"device {serial} is {state}; only an active device can be revoked"


def reset_check(device: Device) -> None:
    if not device.allows(DeviceAction.RESET):
        raise DeviceNotEligible(reset_refusal_advice(device.serial, device.state))


def revoke_check(device: Device) -> None:
    if not device.allows(DeviceAction.REVOKE) or device.current_certificate_id is None:
        raise DeviceNotEligible(revoke_refusal_advice(device.serial, device.state))


ACTION_CHECKS: dict[str, Callable[[Device], None]] = {
    DeviceAction.ISSUE_TOKEN: token_check,
    DeviceAction.REVOKE: revoke_check,
    DeviceAction.RESET: reset_check,
}


def device_refusal(*, action: str, device: Device) -> str | None:
    """Why the device's state does not allow a staff action now (the lifecycle's answer, in words), or None."""
    try:
        ACTION_CHECKS[action](device)
    except DeviceNotEligible as exc:
        return str(exc)
    return None


def devices_check(*, serials: list[str], check: Callable[[Device], None]) -> list[str]:
    """Check every serial before a command changes any: all known, each in a state the action allows.

    Returns the serials without repeats, in the order given; raises ServiceError naming the first bad one.
    """
    serials = list(dict.fromkeys(serials))
    if not serials:
        raise ServiceError("no serials given")
    for serial in serials:
        if not SERIAL_RE.match(serial):
            raise ServiceError(f"{serial[:70]!r} is not a valid serial")
    devices = {d.serial: d for d in Device.objects.filter(serial__in=serials)}
    for serial in serials:
        if serial not in devices:
            raise ServiceError(f"unknown serial {serial}")
        check(devices[serial])
    return serials


def devices_revoke(*, serials: list[str], reason: str, actor: str) -> BatchOutcome:
    """Revoke each device on its own: one failing (AWS down) or skipped (its state does not allow it)
    leaves the others done."""
    outcome = BatchOutcome()
    for serial in serials:
        try:
            device_revoke(serial=serial, reason=reason, actor=actor)
            outcome.succeeded.append(serial)
        except DeviceNotEligible as exc:
            outcome.skipped[serial] = str(exc)
        except ServiceError as exc:
            outcome.failed[serial] = str(exc)
        except aws.AwsError as exc:
            outcome.failed[serial] = aws_failure_advice(exc)
    return outcome


def devices_reset(*, serials: list[str], reason: str, actor: str, ttl_days: int | None = None) -> BatchOutcome:
    token_ttl(ttl_days)  # a bad lifetime refuses the whole batch before any device is touched
    outcome = BatchOutcome()
    for serial in serials:
        try:
            outcome.tokens.append(device_reset(serial=serial, actor=actor, reason=reason, ttl_days=ttl_days))
            outcome.succeeded.append(serial)
        except DeviceNotEligible as exc:
            outcome.skipped[serial] = str(exc)
        except ServiceError as exc:
            outcome.failed[serial] = str(exc)
        except aws.AwsError as exc:
            outcome.failed[serial] = aws_failure_advice(exc)
    return outcome
