"""Registration tokens: issued in runs, stored only as HMAC digests, one lifetime rule for every path."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..bulk import chunks, db_datetime
from ..crypto import token_digest, token_generate
from ..models import LIFECYCLE, AuditKind, Device, DeviceAction, DeviceState
from ..validators import InputInvalid, token_ttl_check
from .common import IssuedToken, ServiceError, devices_transition_many


def token_ttl(ttl_days: int | None) -> int:
    """The lifetime to give a token: `ttl_days`, or CVM_TOKEN_TTL_DAYS; 1 to 3650 days, else ServiceError.

    The one lifetime rule of every path (commands, admin, API), checked before anything changes.
    """
    try:
        return token_ttl_check(settings.CVM_TOKEN_TTL_DAYS if ttl_days is None else ttl_days)
    except InputInvalid as exc:
        raise ServiceError(str(exc)) from None


def tokens_issue(*, serials: list[str], actor: str, ttl_days: int | None = None) -> list[IssuedToken]:
    """Give each device a new token (replacing an unused one); all or none.

    A device that is active or revoked needs `device_reset`, and one being served now cannot change.
    """
    ttl = token_ttl(ttl_days)
    if not serials:
        raise ServiceError("no devices to issue tokens for")
    now = timezone.now()
    expires_at = now + timedelta(days=ttl)
    issued = [IssuedToken(serial=serial, token=token_generate(), expires_at=expires_at) for serial in serials]
    stamp, expires = db_datetime(now), db_datetime(expires_at)
    rows = [
        (t.serial, {"token_digest": token_digest(t.token), "token_expires_at": expires, "token_issued_at": stamp})
        for t in issued
    ]
    # The state condition makes an update lose cleanly against a vend that claimed the device a moment
    # ago; any row not updated rolls the whole run back, so either every device gets its token or none.
    with transaction.atomic():
        updated = devices_transition_many(
            action=DeviceAction.ISSUE_TOKEN,
            rows=rows,
            kind=AuditKind.TOKEN_ISSUED,
            actor=actor,
            data={"expires_at": expires_at.isoformat(), "ttl_days": ttl},
            now=now,
        )
        if updated != len(issued):
            _raise_why_tokens_failed(serials)
    return issued


def _raise_why_tokens_failed(serials: list[str]) -> None:
    states: dict[str, str] = {}
    for chunk in chunks(serials):
        states.update(Device.objects.filter(serial__in=chunk).values_list("serial", "state"))
    for serial in serials:
        if serial not in states:
            raise ServiceError(f"unknown serial {serial}")
    if len(set(serials)) != len(serials):
        raise ServiceError("a serial is listed twice")
    blocked = next(serial for serial in serials if states[serial] not in LIFECYCLE[DeviceAction.ISSUE_TOKEN].sources)
    raise ServiceError(token_refusal_advice(blocked, states[blocked]))


def token_refusal_advice(serial: str, state: str) -> str:
    """Why a device cannot be given a token now, and what does work."""
    if state == DeviceState.ISSUING:
        return (
            f"device {serial} is being issued a certificate right now; wait for it to finish "
            f"(at most {settings.CVM_CLAIM_TIMEOUT_SECONDS} s), then reset it if it needs a new token"
        )
    return f"device {serial} is {state}; use reset to give it a new token"


def registered_serials() -> list[str]:
    return list(Device.objects.filter(state=DeviceState.REGISTERED).order_by("serial").values_list("serial", flat=True))
