"""Reads shared by the API, the admin, the commands and the DynamoDB mirror."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Min

from .models import AuditEvent, AuditKind, Device, DeviceState

APPLY_STATE = {
    DeviceState.REGISTERED: 0,
    DeviceState.TOKEN_ISSUED: 0,
    DeviceState.ISSUING: 0,
    DeviceState.ACTIVE: -1,
    DeviceState.REVOKED: -2,
}


def device_association_item(device: Device) -> dict[str, Any]:
    """The DynamoDB item for a device (SPEC §6). Only the token's HMAC digest, never the token."""
    certificate = device.current_certificate
    return {
        "productId": device.serial,
        "accessTokenHash": device.token_digest or None,
        "timestamp": device.last_request_at.isoformat().replace("+00:00", "Z") if device.last_request_at else None,
        "applyState": APPLY_STATE[DeviceState(device.state)],
        "certID": certificate.certificate_id if certificate else None,
        "status": device.state,
        "thingName": device.thing_name or None,
        "product": device.product.name,
        "version": device.version,
    }


def device_get(*, serial: str) -> Device | None:
    return Device.objects.select_related("product", "current_certificate").filter(serial=serial).first()


def refusals_in_window(
    *, since: datetime, serial: str | None = None, client_address: str | None = None
) -> tuple[int, datetime | None]:
    """How many token refusals since `since` for a serial or an address, and when the oldest was."""
    events = AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED, created_at__gte=since)
    if serial is not None:
        events = events.filter(serial=serial)
    if client_address is not None:
        events = events.filter(client_address=client_address)
    result = events.aggregate(count=Count("id"), oldest=Min("created_at"))
    return result["count"], result["oldest"]


def stale_claim_cutoff(*, now: datetime, timeout_seconds: int) -> datetime:
    return now - timedelta(seconds=timeout_seconds)
