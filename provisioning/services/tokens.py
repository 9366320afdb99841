"""Registration tokens: issued in runs, stored only as HMAC digests, one lifetime rule for every path."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..bulk import chunks, db_datetime
from ..crypto import token_digests, token_generate_many
from ..models import LIFECYCLE, AuditKind, Device, DeviceAction, DeviceState, action_allowed
from ..validators import InputInvalid, token_ttl_check
from .common import BatchOutcome, DeviceNotEligible, IssuedToken, ServiceError, devices_transition_many, issuing_advice


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
    tokens = token_generate_many(len(serials))
    issued = [
        IssuedToken(serial=serial, token=token, expires_at=expires_at)
        for serial, token in zip(serials, tokens, strict=True)
    ]
    # The state condition makes an update lose cleanly against a vend that claimed the device a moment
    # ago; any row not updated rolls the whole run back, so either every device gets its token or none.
    with transaction.atomic():
        updated = devices_transition_many(
            action=DeviceAction.ISSUE_TOKEN,
            serials=serials,
            kind=AuditKind.TOKEN_ISSUED,
            actor=actor,
            data={"expires_at": expires_at.isoformat(), "ttl_days": ttl},
            now=now,
            changes={"token_expires_at": db_datetime(expires_at), "token_issued_at": db_datetime(now)},
            each={"token_digest": token_digests(tokens)},
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
    sources = LIFECYCLE[DeviceAction.ISSUE_TOKEN].sources
    blocked = next((serial for serial in serials if states[serial] not in sources), None)
    if blocked is None:  # it changed back meanwhile
        raise DeviceNotEligible("a device changed while the tokens were being issued; nothing was issued")
    raise DeviceNotEligible(token_refusal_advice(blocked, states[blocked]))


# How often a run of eligible devices is read again when one of them changed between reading and writing.
ELIGIBLE_ATTEMPTS = 3


def tokens_issue_eligible(*, serials: list[str], actor: str, ttl_days: int | None = None) -> BatchOutcome:
    """Give a token to each device whose state allows one; skip the others, each with the reason.

    What the admin's confirmation page promised: a device that changed state since (a vend claimed it,
    a colleague reset it) is skipped with the reason, and the others are done. The run over the
    eligible devices is still all or none; if one changed between reading and writing, it is read again.
    """
    ttl = token_ttl(ttl_days)
    serials = list(dict.fromkeys(serials))
    for _ in range(ELIGIBLE_ATTEMPTS):
        states: dict[str, str] = {}
        for chunk in chunks(serials):
            states.update(Device.objects.filter(serial__in=chunk).values_list("serial", "state"))
        skipped = {}
        for serial in serials:
            if serial not in states:
                skipped[serial] = f"unknown serial {serial}"
            elif not action_allowed(DeviceAction.ISSUE_TOKEN, states[serial]):
                skipped[serial] = token_refusal_advice(serial, states[serial])
        eligible = [serial for serial in serials if serial not in skipped]
        if not eligible:
            return BatchOutcome(skipped=skipped)
        try:
            tokens = tokens_issue(serials=eligible, actor=actor, ttl_days=ttl)
        except DeviceNotEligible:
            continue  # one changed between the read and the write; nothing was written
        return BatchOutcome(succeeded=eligible, skipped=skipped, tokens=tokens)
    raise ServiceError("the devices kept changing while the tokens were being issued; nothing was issued, try again")


def token_check(device: Device) -> None:
    if not device.allows(DeviceAction.ISSUE_TOKEN):
        raise DeviceNotEligible(token_refusal_advice(device.serial, device.state))


def token_refusal_advice(serial: str, state: str) -> str:
    """Why a device cannot be given a token now, and what does work."""
    if state == DeviceState.ISSUING:
        return issuing_advice(serial, "reset it if it needs a new token")
    return f"device {serial} is {state}; use reset to give it a new token"


def registered_serials() -> list[str]:
    return list(Device.objects.filter(state=DeviceState.REGISTERED).order_by("serial").values_list("serial", flat=True))
