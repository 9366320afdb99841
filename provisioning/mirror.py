"""The DynamoDB association table follows the database through the outbox (SPEC §6).

Every device change writes an outbox row in its own transaction. `outbox_drain` leases a batch of
pending rows in a short transaction, writes them to DynamoDB outside any transaction, and marks them
done only after DynamoDB accepted them. A write is conditional on `version`, so DynamoDB accepts the
versions of one serial only in increasing order and never lets an older change replace a newer one,
however workers interleave; a lease keeps two workers from writing the same row.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from . import aws
from .bulk import chunks, db_json
from .models import Certificate, Device, DeviceState, DynamoOutbox, Product

logger = logging.getLogger(__name__)


# --- The item: what the association table holds for a device (SPEC §6) ----------------------------

APPLY_STATE = {
    DeviceState.REGISTERED: 0,
    DeviceState.TOKEN_ISSUED: 0,
    DeviceState.ISSUING: 0,
    DeviceState.ACTIVE: -1,
    DeviceState.REVOKED: -2,
}


def association_item(
    *,
    serial: str,
    state: str,
    version: int,
    product: str,
    thing_name: str,
    token_digest: str,
    last_request_at: datetime | None,
    certificate_id: str | None,
    pending_certificate_id: str | None = None,
) -> dict[str, Any]:
    """The DynamoDB item for a device (SPEC §6). Only the token's HMAC digest, never the token."""
    return {
        "productId": serial,
        "accessTokenHash": token_digest or None,
        "timestamp": last_request_at.isoformat().replace("+00:00", "Z") if last_request_at else None,
        "applyState": APPLY_STATE[DeviceState(state)],
        "certID": certificate_id,
        "status": state,
        "thingName": thing_name or None,
        "product": product,
        # Only during a rotation (SPEC §6); absent otherwise (None values are not written).
        "pendingCertID": pending_certificate_id,
        "version": version,
    }


def device_association_item(device: Device) -> dict[str, Any]:
    certificate = device.current_certificate
    pending = device.pending_certificate
    return association_item(
        serial=device.serial,
        state=device.state,
        version=device.version,
        product=device.product.name,
        thing_name=device.thing_name,
        token_digest=device.token_digest,
        last_request_at=device.last_request_at,
        certificate_id=certificate.certificate_id if certificate else None,
        pending_certificate_id=pending.certificate_id if pending else None,
    )


# The fields association_item needs, as `values()` names them, for bulk changes that never build models.
# The device columns an item is made of, as an UPDATE … RETURNING of many devices gives them back.
ASSOCIATION_COLUMNS = [
    "serial", "state", "version", "product_id", "thing_name", "token_digest", "last_request_at",
    "current_certificate_id", "pending_certificate_id",
]  # fmt: skip


class AssociationItemsJson:
    """The item of each device of a bulk run, as the outbox stores it: `db_json(association_item(...))`.

    A run's devices share most of their item (state, product, no certificate, no request yet). For each
    such group the item is encoded once, with markers where serial, token digest, thing name and version
    go, and a device's text is that encoding with its own four values put in: half the time of building
    and encoding each dict (0.23 s against 0.46 s for 100,000; tests/test_bulk.py checks both agree).
    """

    # NUL is in no serial, digest or thing name (validators.py), nor in anything else an item holds.
    MARKERS = ("\x00serial\x00", "\x00digest\x00", "\x00thing\x00", "\x00version\x00")

    def __init__(self) -> None:
        # group -> the item's text as a str.format template ({0} serial, {1} digest, {2} thing, {3} version);
        # None: encode the group's items whole
        self._templates: dict[tuple[Any, ...], str | None] = {}

    def __call__(
        self,
        *,
        serial: str,
        state: str,
        version: int,
        product: str,
        thing_name: str,
        token_digest: str,
        last_request_at: datetime | None,
        certificate_id: str | None,
        pending_certificate_id: str | None = None,
    ) -> str:
        group = (
            state,
            product,
            bool(token_digest),
            bool(thing_name),
            last_request_at,
            certificate_id,
            pending_certificate_id,
        )
        template = self._templates.get(group, "")
        if template == "":
            template = self._templates[group] = self._template(*group)
        if template is None:
            return db_json(
                association_item(
                    serial=serial, state=state, version=version, product=product, thing_name=thing_name,
                    token_digest=token_digest, last_request_at=last_request_at, certificate_id=certificate_id,
                    pending_certificate_id=pending_certificate_id,
                )
            )  # fmt: skip
        return template.format(
            encode_basestring_ascii(serial),
            encode_basestring_ascii(token_digest),
            encode_basestring_ascii(thing_name),
            int(version),
        )

    def _template(
        self,
        state: str,
        product: str,
        has_digest: bool,
        has_thing: bool,
        last_request_at: datetime | None,
        certificate_id: str | None,
        pending_certificate_id: str | None,
    ) -> str | None:
        serial, digest, thing, version = self.MARKERS
        text = db_json(
            association_item(
                serial=serial, state=state, version=version, product=product,  # type: ignore[arg-type]
                thing_name=thing if has_thing else "", token_digest=digest if has_digest else "",
                last_request_at=last_request_at, certificate_id=certificate_id,
                pending_certificate_id=pending_certificate_id,
            )
        ).replace("{", "{{").replace("}", "}}")  # fmt: skip
        for index, (marker, present) in enumerate(zip(self.MARKERS, (True, has_digest, has_thing, True), strict=True)):
            encoded = encode_basestring_ascii(marker)
            if text.count(encoded) != (1 if present else 0):
                return None  # a marker the item does not hold exactly where expected: encode such items whole
            text = text.replace(encoded, f"{{{index}}}")
        return text


def association_items_from_rows(rows: list[Sequence[Any]], *, encoded: bool = False) -> Iterator[Any]:
    """Items for many devices from their ASSOCIATION_COLUMNS, one per row as they are taken (so COPY can
    send each batch while the next is made); product names and certificate ids are read once for all.

    `encoded`: (serial, version, the item as the outbox stores it) instead of the item.
    """
    products = dict(Product.objects.filter(pk__in={row[3] for row in rows}).values_list("pk", "name"))
    certificate_pks = sorted({pk for row in rows for pk in row[7:9] if pk is not None})
    certificates: dict[int, str] = {}
    for chunk in chunks(certificate_pks):
        certificates.update(Certificate.objects.filter(pk__in=chunk).values_list("pk", "certificate_id"))
    item_json = AssociationItemsJson()
    for serial, state, version, product_pk, thing_name, digest, last_request_at, current, pending in rows:
        if isinstance(last_request_at, str):  # SQLite gives a raw RETURNING value back as text
            last_request_at = connection.ops.convert_datetimefield_value(last_request_at, None, connection)
        fields = {
            "serial": serial,
            "state": state,
            "version": version,
            "product": products[product_pk],
            "thing_name": thing_name,
            "token_digest": digest,
            "last_request_at": last_request_at,
            "certificate_id": certificates.get(current),
            "pending_certificate_id": certificates.get(pending),
        }
        yield (serial, version, item_json(**fields)) if encoded else association_item(**fields)


LEASE = timedelta(seconds=60)
WRITERS = 16
MAX_BACKOFF_SECONDS = 300
IDLE_SLEEP_SECONDS = 0.5
FAILURE_SLEEP_SECONDS = 2.0
PRUNE_EVERY_SECONDS = 3600


@dataclass(frozen=True)
class DrainReport:
    written: int = 0
    superseded: int = 0
    failed: int = 0

    @property
    def handled(self) -> int:
        return self.written + self.superseded + self.failed


def _lease_batch(batch_size: int, *, ignore_backoff: bool) -> list[DynamoOutbox]:
    now = timezone.now()
    pending = DynamoOutbox.objects.filter(done_at__isnull=True).filter(
        Q(leased_until__isnull=True) | Q(leased_until__lte=now)
    )
    if not ignore_backoff:
        pending = pending.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    with transaction.atomic():
        # SKIP LOCKED lets several workers lease disjoint batches on PostgreSQL; SQLite serialises the
        # whole transaction instead. Either way a row is leased by one worker at a time.
        rows = list(pending.select_for_update(skip_locked=True).order_by("id")[:batch_size])
        if rows:
            DynamoOutbox.objects.filter(pk__in=[row.pk for row in rows]).update(leased_until=now + LEASE)
    return rows


def outbox_drain(*, batch_size: int = 200, ignore_backoff: bool = False) -> DrainReport:
    """Deliver one batch of pending changes; returns what happened to them."""
    rows = _lease_batch(batch_size, ignore_backoff=ignore_backoff)
    if not rows:
        return DrainReport()
    # Only the newest version of each serial in the batch needs writing; the others are superseded.
    newest: dict[str, DynamoOutbox] = {}
    for row in rows:
        if row.serial not in newest or row.version > newest[row.serial].version:
            newest[row.serial] = row
    done = [row.pk for row in rows if newest[row.serial].pk != row.pk]
    superseded = len(done)
    table = settings.CVM_DYNAMODB_TABLE

    def put(row: DynamoOutbox) -> str | None:
        try:
            aws.association_put(table_name=table, item=row.item)
            return None
        except aws.AwsError as exc:
            return exc.code

    # One serial appears once per batch, so the writes are independent and can go out side by side.
    outcomes = list(_pool().map(put, newest.values()))
    failed = [(row, code) for row, code in zip(newest.values(), outcomes, strict=True) if code is not None]
    done.extend(row.pk for row, code in zip(newest.values(), outcomes, strict=True) if code is None)
    written = len(newest) - len(failed)
    now = timezone.now()
    with transaction.atomic():
        DynamoOutbox.objects.filter(pk__in=done).update(done_at=now, leased_until=None, last_error="")
        for row, code in failed:
            attempts = row.attempts + 1
            DynamoOutbox.objects.filter(pk=row.pk).update(
                attempts=attempts,
                next_attempt_at=now + timedelta(seconds=min(MAX_BACKOFF_SECONDS, 2**attempts)),
                leased_until=None,
                last_error=code[:255],
            )
    if failed:
        logger.warning("dynamodb sync failed", extra={"failed": len(failed), "code": failed[0][1]})
    return DrainReport(written=written, superseded=superseded, failed=len(failed))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="dynamodb")


@dataclass
class PeriodicJob:
    """Work the long-running worker does every `every_seconds` beside draining the outbox."""

    name: str
    every_seconds: float
    run: Callable[[], object]
    last_run: float = 0.0

    def run_if_due(self) -> None:
        now = time.monotonic()
        if self.last_run and now - self.last_run < self.every_seconds:
            return
        self.last_run = now
        try:
            self.run()
        except aws.AwsError as exc:
            logger.warning("periodic job failed", extra={"job": self.name, "code": exc.code})
        except (OSError, ValueError) as exc:
            logger.error("periodic job failed", extra={"job": self.name, "error": str(exc)[:200]})


def outbox_follow(*, stop: threading.Event, batch_size: int = 200, jobs: list[PeriodicJob] | None = None) -> None:
    """Keep draining until `stop` is set: at once while there is work, every half second when idle.

    `jobs` (audit anchoring, …) run when due, between batches.
    """
    jobs = [
        PeriodicJob(
            "outbox_prune",
            PRUNE_EVERY_SECONDS,
            lambda: outbox_prune(older_than=timedelta(days=settings.CVM_OUTBOX_RETENTION_DAYS)),
        ),
        *(jobs or []),
    ]
    while not stop.is_set():
        try:
            report = outbox_drain(batch_size=batch_size)
            for job in jobs:
                job.run_if_due()
        except DatabaseError:
            # The database went away (restart, failover): reconnect on the next round.
            logger.warning("outbox worker lost the database; retrying")
            close_old_connections()
            stop.wait(FAILURE_SLEEP_SECONDS)
            continue
        if report.failed:
            stop.wait(FAILURE_SLEEP_SECONDS)
        elif report.handled == 0:
            stop.wait(IDLE_SLEEP_SECONDS)


def outbox_prune(*, older_than: timedelta) -> int:
    """Delete delivered rows older than the retention period; pending rows are never pruned."""
    cutoff = timezone.now() - older_than
    deleted, _ = DynamoOutbox.objects.filter(done_at__lt=cutoff).delete()
    return deleted


def outbox_backlog() -> int:
    return DynamoOutbox.objects.filter(done_at__isnull=True).count()
