"""Reads shared by the API, the admin, the commands and the DynamoDB mirror."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Prefetch, Q, QuerySet
from django.db.models.functions import TruncDate

from .bulk import db_datetime
from .models import (
    AuditEvent,
    AuditKind,
    Certificate,
    Device,
    DeviceState,
    DynamoOutbox,
    ImportBatch,
    ImportState,
    Product,
)


def device_get(*, serial: str) -> Device | None:
    return (
        Device.objects.select_related("product", "current_certificate", "pending_certificate")
        .filter(serial=serial)
        .first()
    )


# What refusing a token needs: the state and the token's fields (`DeviceState`, `token_matches`).
CREDENTIAL_FIELDS = ("id", "serial", "state", "token_digest", "token_issued_at", "token_expires_at")


def device_credentials(*, serial: str) -> Device | None:
    """The device with only CREDENTIAL_FIELDS loaded (the others load on first use), or None.

    Every guess reads this, so it is one plain statement on one table: the full row with its product and
    certificates (`device_get`) costs about twenty times as much to build, and the same statement
    through the ORM's query compiler about four times.
    """
    quote = connection.ops.quote_name
    columns = ", ".join(quote(Device._meta.get_field(name).column) for name in CREDENTIAL_FIELDS)
    sql = f"SELECT {columns} FROM {quote(Device._meta.db_table)} WHERE {quote('serial')} = %s"  # noqa: S608
    return next(iter(Device.objects.raw(sql, [serial])), None)


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


# --- Staff portal ---------------------------------------------------------------------------------


def device_admin_queryset() -> QuerySet[Device]:
    """Devices with what the staff pages show beside each: its product and certificates."""
    return Device.objects.select_related("product", "current_certificate", "pending_certificate")


SEARCH_TERMS_MAX = 100


def search_terms(text: str) -> list[str]:
    """The words of a list's search box; a trailing * (a habit from other tools) means what a word means anyway."""
    return [word.rstrip("*") for word in text.split()[:SEARCH_TERMS_MAX] if word.rstrip("*")]


def device_search(queryset: QuerySet[Device], terms: list[str]) -> QuerySet[Device]:
    """Devices whose serial starts with any of the words, or whose certificate has one as its id or
    SHA-256 fingerprint. Each condition runs on an index of the device table (the certificate's through
    a subquery), so a search never reads the whole fleet."""
    if not terms:
        return queryset
    condition = Q()
    for term in terms:
        condition |= Q(serial__startswith=term)
    certificates = Certificate.objects.filter(Q(certificate_id__in=terms) | Q(fingerprint_sha256__in=_lower(terms)))
    return queryset.filter(condition | Q(current_certificate_id__in=certificates.values("pk")))


def certificate_search(queryset: QuerySet[Certificate], terms: list[str]) -> QuerySet[Certificate]:
    """Certificates whose id or device serial starts with a word, or whose fingerprint or revoker is one."""
    if not terms:
        return queryset
    condition = Q(fingerprint_sha256__in=_lower(terms)) | Q(revoked_by__in=terms)
    for term in terms:
        condition |= Q(certificate_id__startswith=term.lower())
        condition |= Q(device_id__in=Device.objects.filter(serial__startswith=term).values("pk"))
    return queryset.filter(condition)


def _lower(terms: list[str]) -> list[str]:
    return [term.lower() for term in terms]


def device_pks_by_serial(serials: set[str]) -> dict[str, int]:
    """The devices a page of audit events names, for its links (one query per page)."""
    return dict(Device.objects.filter(serial__in=list(serials)).values_list("serial", "pk")) if serials else {}


def certificate_pks_by_id(certificate_ids: set[str]) -> dict[str, int]:
    if not certificate_ids:
        return {}
    found = Certificate.objects.filter(certificate_id__in=list(certificate_ids))
    return dict(found.values_list("certificate_id", "pk"))


def devices_for_action(queryset: QuerySet[Device]) -> list[Device]:
    """A selection about to be confirmed, in the order its confirmation page lists it."""
    return list(queryset.select_related("product", "current_certificate").order_by("serial"))


def device_for_action(*, pk: int) -> Device | None:
    return Device.objects.select_related("product", "current_certificate").filter(pk=pk).first()


def import_batch_get(*, batch_id: Any) -> ImportBatch | None:
    """An upload without its file (which can be tens of megabytes)."""
    return ImportBatch.objects.defer("content").filter(pk=batch_id).first()


def import_batches_recent(*, limit: int = 10) -> list[ImportBatch]:
    return list(ImportBatch.objects.defer("content", "preview", "known_preview")[:limit])


def import_batches_imported(*, limit: int = 10) -> list[ImportBatch]:
    """The latest imports that registered devices, newest first (the device list's "import" filter)."""
    return list(
        ImportBatch.objects.filter(state=ImportState.IMPORTED)
        .defer("content", "preview", "known_preview")
        .order_by("-uploaded_at")[:limit]
    )


@dataclass(frozen=True)
class BatchDevices:
    """Where the devices an import registered stand now."""

    total: int
    by_state: list[tuple[str, str, int]]  # (state, label, count), lifecycle order
    registered: int  # without a token yet
    first_registered_pk: int | None


def import_batch_devices(*, batch_id: Any) -> BatchDevices:
    devices = Device.objects.filter(import_batch_id=batch_id)
    counts = dict(devices.order_by().values_list("state").annotate(n=Count("id")))
    registered = counts.get(DeviceState.REGISTERED, 0)
    first = (
        devices.filter(state=DeviceState.REGISTERED).order_by("pk").values_list("pk", flat=True).first()
        if registered
        else None
    )
    return BatchDevices(
        total=sum(counts.values()),
        by_state=[(state.value, state.label, counts[state.value]) for state in DeviceState if counts.get(state.value)],
        registered=registered,
        first_registered_pk=first,
    )


def product_names(*, limit: int = 500) -> list[str]:
    return list(Product.objects.order_by("name").values_list("name", flat=True)[:limit])


@dataclass(frozen=True)
class RefusalWindow:
    count: int
    oldest: datetime | None


def refusals_in_window(
    *, since: datetime, serial: str, client_address: str | None, serial_since: datetime | None = None
) -> tuple[RefusalWindow, RefusalWindow]:
    """Token refusals for the serial (since `serial_since`, default `since`) and for the address (since
    `since`), in one query.

    Every refused token and proof asks this, so it is one plain statement: building the same aggregate
    through the ORM cost about five times the query itself. It reads the indexes on (serial, kind,
    created_at) and (client_address, kind, created_at).
    """
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    serial_from = db_datetime(serial_since or since)
    for_serial = "serial = %s AND created_at >= %s"
    for_address = "client_address = %s"
    sql = (
        f"SELECT COUNT(*) FILTER (WHERE {for_serial}), MIN(created_at) FILTER (WHERE {for_serial}), "  # noqa: S608
        f"COUNT(*) FILTER (WHERE {for_address}), MIN(created_at) FILTER (WHERE {for_address}) "
        f"FROM {table} WHERE kind IN (%s, %s) AND created_at >= %s AND (({for_serial}) OR {for_address})"
    )
    # A NULL address matches no row, as it should: an unknown caller is counted by serial only.
    params = [
        *(serial, serial_from) * 2,
        *(client_address,) * 2,
        # Failed proofs count like failed tokens (SPEC §3.2).
        AuditKind.VEND_REFUSED.value,
        AuditKind.ROTATE_REFUSED.value,
        db_datetime(since),
        serial,
        serial_from,
        client_address,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        serial_count, serial_oldest, address_count, address_oldest = cursor.fetchone()
    return (
        RefusalWindow(serial_count, _db_datetime_read(serial_oldest)),
        RefusalWindow(address_count, _db_datetime_read(address_oldest)),
    )


def _db_datetime_read(value: datetime | str | None) -> datetime | None:
    """A timestamp as a raw query returns it: a datetime from PostgreSQL, UTC text from SQLite."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


# --- Dashboard ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayCount:
    day: date
    issued: int
    refused: int


@dataclass(frozen=True)
class Dashboard:
    devices_by_state: list[tuple[str, str, int]]  # (state, label, count), in lifecycle order
    days: list[DayCount]
    latest_failures: list[AuditEvent]
    outbox_pending: int
    outbox_failing: int
    outbox_oldest: datetime | None  # when the oldest change still waiting for DynamoDB was made
    rotations_pending: int


def dashboard_data(*, now: datetime, days: int = 30) -> Dashboard:
    counts = dict(Device.objects.order_by().values_list("state").annotate(n=Count("id")))
    by_state = [(state.value, state.label, counts.get(state.value, 0)) for state in DeviceState]
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
        outbox_oldest=pending.order_by("id").values_list("created_at", flat=True).first(),
        rotations_pending=Device.objects.filter(pending_certificate__isnull=False).count(),
    )
