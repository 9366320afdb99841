"""Reads shared by the API, the admin, the commands and the DynamoDB mirror."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Count, Min, Prefetch, Q, QuerySet
from django.db.models.functions import TruncDate

from .models import AuditEvent, AuditKind, Certificate, Device, DeviceState, DynamoOutbox


def device_get(*, serial: str) -> Device | None:
    return (
        Device.objects.select_related("product", "current_certificate", "pending_certificate")
        .filter(serial=serial)
        .first()
    )


def devices_list(*, state: str | None = None, product: str | None = None) -> QuerySet[Device]:
    """Devices for the staff API's list, filtered; the caller orders and pages them."""
    devices = Device.objects.select_related("product", "current_certificate", "pending_certificate")
    if state:
        devices = devices.filter(state=state)
    if product:
        devices = devices.filter(product__name=product)
    return devices


def device_with_certificates(*, serial: str) -> Device | None:
    """A device and its whole certificate history, newest first."""
    return (
        Device.objects.select_related("product", "current_certificate", "pending_certificate")
        .prefetch_related(Prefetch("certificates", queryset=Certificate.objects.order_by("-issued_at", "-id")))
        .filter(serial=serial)
        .first()
    )


def serials_unknown(serials: list[str]) -> set[str]:
    """Those of `serials` that no device has."""
    from .bulk import chunks

    known: set[str] = set()
    for chunk in chunks(serials):
        known.update(Device.objects.filter(serial__in=chunk).values_list("serial", flat=True))
    return set(serials) - known


def audit_events_list(
    *, serial: str | None = None, kind: str | None = None, since: datetime | None = None
) -> QuerySet[AuditEvent]:
    """Audit events for the staff API, filtered; the caller orders them by `seq` and pages them."""
    events = AuditEvent.objects.all()
    if serial:
        events = events.filter(serial=serial)
    if kind:
        events = events.filter(kind=kind)
    if since:
        events = events.filter(created_at__gte=since)
    return events


@dataclass(frozen=True)
class RefusalWindow:
    count: int
    oldest: datetime | None


def refusals_in_window(
    *, since: datetime, serial: str, client_address: str | None, serial_since: datetime | None = None
) -> tuple[RefusalWindow, RefusalWindow]:
    """Token refusals for the serial (since `serial_since`, default `since`) and for the address (since
    `since`), in one query."""
    for_serial = Q(serial=serial, created_at__gte=serial_since or since)
    for_address = Q(client_address=client_address) if client_address else Q(pk__in=[])
    # Failed proofs count like failed tokens (SPEC §3.2).
    result = AuditEvent.objects.filter(
        for_serial | for_address, kind__in=[AuditKind.VEND_REFUSED, AuditKind.ROTATE_REFUSED], created_at__gte=since
    ).aggregate(
        serial_count=Count("id", filter=for_serial),
        serial_oldest=Min("created_at", filter=for_serial),
        address_count=Count("id", filter=for_address),
        address_oldest=Min("created_at", filter=for_address),
    )
    return (
        RefusalWindow(result["serial_count"], result["serial_oldest"]),
        RefusalWindow(result["address_count"], result["address_oldest"]),
    )


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
