"""Reads shared by the API, the admin, the commands and the DynamoDB mirror."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import Count, Min
from django.db.models.functions import TruncDate

from .models import AuditEvent, AuditKind, Device, DeviceState, DynamoOutbox

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


# --- Dashboard ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayCount:
    day: date
    issued: int
    refused: int


@dataclass(frozen=True)
class Dashboard:
    devices_by_state: list[tuple[str, int]]
    days: list[DayCount]
    latest_failures: list[AuditEvent]
    outbox_pending: int
    outbox_failing: int


def dashboard_data(*, now: datetime, days: int = 30) -> Dashboard:
    counts = dict(Device.objects.order_by().values_list("state").annotate(n=Count("id")))
    by_state = [(state.label, counts.get(state.value, 0)) for state in DeviceState]
    first_day = (now - timedelta(days=days - 1)).date()
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
    per_day: dict[tuple[date, str], int] = {
        (row["day"], row["kind"]): row["n"]
        for row in AuditEvent.objects.filter(
            kind__in=[AuditKind.CERTIFICATE_ISSUED, AuditKind.VEND_REFUSED], created_at__gte=since
        )
        .annotate(day=TruncDate("created_at"))
        .order_by()
        .values("day", "kind")
        .annotate(n=Count("id"))
    }
    series = [
        DayCount(
            day=day,
            issued=per_day.get((day, AuditKind.CERTIFICATE_ISSUED), 0),
            refused=per_day.get((day, AuditKind.VEND_REFUSED), 0),
        )
        for day in (first_day + timedelta(days=i) for i in range(days))
    ]
    failures = list(
        AuditEvent.objects.filter(kind__in=[AuditKind.VEND_FAILED, AuditKind.CLAIM_RECOVERED]).order_by("-seq")[:10]
    )
    pending = DynamoOutbox.objects.filter(done_at__isnull=True)
    return Dashboard(
        devices_by_state=by_state,
        days=series,
        latest_failures=failures,
        outbox_pending=pending.count(),
        outbox_failing=pending.filter(attempts__gt=0).count(),
    )
