"""Reads shared by the API, the admin, the commands and the DynamoDB mirror."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
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
from .prepared import Selection, column, convert, field_converters, selection, table

_DEVICE_RELATED = ("product", "current_certificate", "pending_certificate")


@functools.cache
def _device_get_statement(vendor: str) -> tuple[str, tuple[Selection, ...]]:
    parts = (selection(Device, "d"), selection(Product, "p"), selection(Certificate, "c"), selection(Certificate, "n"))
    device, product, current, pending = parts
    certificates, certificate_pk = table(Certificate), column(Certificate, "id")
    # Every vend starts here: written once from the models' meta (see prepared.py), `serial` a parameter.
    sql = (
        f"SELECT {device.sql}, {product.sql}, {current.sql}, {pending.sql} "  # noqa: S608
        f"FROM {table(Device)} d "
        f"INNER JOIN {table(Product)} p ON p.{column(Product, 'id')} = d.{column(Device, 'product')} "
        f"LEFT OUTER JOIN {certificates} c ON c.{certificate_pk} = d.{column(Device, 'current_certificate')} "
        f"LEFT OUTER JOIN {certificates} n ON n.{certificate_pk} = d.{column(Device, 'pending_certificate')} "
        f"WHERE d.{column(Device, 'serial')} = %s"
    )
    return sql, parts


def device_get(*, serial: str) -> Device | None:
    """The device with this serial, its product and its current and pending certificates; None when
    no device has it. One statement, the same work whether the serial is known or not."""
    sql, parts = _device_get_statement(connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(sql, [serial])
        row = cursor.fetchone()
    if row is None:
        return None
    instances = []
    start = 0
    for part in parts:
        instances.append(part.instance(row[start : start + part.width]))
        start += part.width
    found, *related = instances
    for name, value in zip(_DEVICE_RELATED, related, strict=True):
        Device._meta.get_field(name).set_cached_value(found, value)  # type: ignore[union-attr]
    return found


@functools.cache
def _certificate_ids_sql(vendor: str) -> str:
    # Read before every issuance (prepared.py says why it is written by hand); the device a parameter.
    return (
        f"SELECT {column(Certificate, 'certificate_id')} FROM {table(Certificate)} "  # noqa: S608
        f"WHERE {column(Certificate, 'device')} = %s"
    )


def certificate_ids_of(*, device_pk: int) -> frozenset[str]:
    """The ids of every certificate the database has recorded for a device, whatever its status."""
    with connection.cursor() as cursor:
        cursor.execute(_certificate_ids_sql(connection.vendor), [device_pk])
        return frozenset(certificate_id for (certificate_id,) in cursor.fetchall())


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
    """Chained audit events for the staff API, filtered; the caller orders them by `seq` and pages them.

    Only chained ones: a new `seq` is always above every existing one, so a client following the
    cursor never misses an event, which ordering by write order (`id`) could not promise on PostgreSQL
    (a transaction may commit after a later one). An event is listed within a second of its commit.
    """
    events = AuditEvent.objects.filter(seq__isnull=False)
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


@functools.cache
def _refusals_sql(vendor: str) -> str:
    serial, address, kind, created = (
        column(AuditEvent, name) for name in ("serial", "client_address", "kind", "created_at")
    )
    # Two aggregates, each on the index that starts with its own column ((serial, kind, created_at) and
    # (client_address, kind, created_at)), so each reads only that caller's refusals. One WHERE with
    # `serial = … OR client_address = …` let SQLite's planner pick (kind, created_at) instead and read
    # every refusal of the past hour: a spray from many addresses made each refusal dearer than the last.
    # Asked on every vend and every refusal, so written once (see prepared.py); values are parameters.
    refused = f"{kind} IN (%s, %s) AND {created} >= %s"
    return (
        "SELECT by_serial.n, by_serial.oldest, by_address.n, by_address.oldest FROM "  # noqa: S608
        f"(SELECT COUNT(*) AS n, MIN({created}) AS oldest FROM {table(AuditEvent)} "
        f"WHERE {serial} = %s AND {refused}) AS by_serial, "
        f"(SELECT COUNT(*) AS n, MIN({created}) AS oldest FROM {table(AuditEvent)} "
        f"WHERE {address} = %s AND {refused}) AS by_address"
    )


def refusals_in_window(
    *, since: datetime, serial: str, client_address: str | None, serial_since: datetime | None = None
) -> tuple[RefusalWindow, RefusalWindow]:
    """Token refusals for the serial (since `serial_since`, default `since`) and for the address (since
    `since`), in one query: (for the serial, for the address), each a count and its oldest time.

    Each count reads that serial's or that address's own rows on its index, however many other callers
    were refused in the window. No address (NULL) counts nothing.
    """
    address = connection.ops.adapt_ipaddressfield_value(client_address) if client_address else None
    # Failed proofs count like failed tokens (SPEC §3.2).
    kinds = [AuditKind.VEND_REFUSED.value, AuditKind.ROTATE_REFUSED.value]
    params = [serial, *kinds, db_datetime(serial_since or since), address, *kinds, db_datetime(since)]
    with connection.cursor() as cursor:
        cursor.execute(_refusals_sql(connection.vendor), params)
        serial_count, serial_oldest, address_count, address_oldest = cursor.fetchone()
    expression, converters = field_converters(AuditEvent._meta.get_field("created_at"), AuditEvent._meta.db_table)  # type: ignore[arg-type]
    return (
        RefusalWindow(int(serial_count), convert(serial_oldest, expression, converters)),
        RefusalWindow(int(address_count), convert(address_oldest, expression, converters)),
    )


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
        AuditEvent.objects.filter(kind__in=[AuditKind.VEND_FAILED, AuditKind.CLAIM_RECOVERED]).order_by("-id")[:10]
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
