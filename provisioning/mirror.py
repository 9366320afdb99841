"""The DynamoDB association table follows the database through the outbox (SPEC §6).

Every device change writes an outbox row in its own transaction. `outbox_drain` leases a batch of
pending rows in a short transaction, writes them to DynamoDB outside any transaction, and marks them
done only after DynamoDB accepted them. A write is conditional on `version`, so an older change never
replaces a newer one, whatever order workers happen to deliver them in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import aws
from .models import DynamoOutbox

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
MAX_BACKOFF_SECONDS = 300


@dataclass(frozen=True)
class DrainReport:
    written: int = 0
    superseded: int = 0
    failed: int = 0

    @property
    def handled(self) -> int:
        return self.written + self.superseded + self.failed


def _lease_batch(batch_size: int) -> list[DynamoOutbox]:
    now = timezone.now()
    with transaction.atomic():
        # SKIP LOCKED lets several workers lease disjoint batches on PostgreSQL; SQLite serialises the
        # whole transaction instead. Either way a row is leased by one worker at a time.
        rows = list(
            DynamoOutbox.objects.select_for_update(skip_locked=True)
            .filter(done_at__isnull=True)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by("id")[:batch_size]
        )
        if rows:
            DynamoOutbox.objects.filter(pk__in=[row.pk for row in rows]).update(next_attempt_at=now + LEASE)
    return rows


def outbox_drain(*, batch_size: int = 200) -> DrainReport:
    """Deliver one batch of pending changes; returns what happened to them."""
    rows = _lease_batch(batch_size)
    if not rows:
        return DrainReport()
    # Only the newest version of each serial in the batch needs writing; the others are superseded.
    newest: dict[str, DynamoOutbox] = {}
    for row in rows:
        if row.serial not in newest or row.version > newest[row.serial].version:
            newest[row.serial] = row
    superseded = [row.pk for row in rows if newest[row.serial].pk != row.pk]
    done = list(superseded)
    failed: list[tuple[DynamoOutbox, str]] = []
    written = 0
    table = settings.CVM_DYNAMODB_TABLE
    for row in newest.values():
        try:
            aws.association_put(table_name=table, item=row.item)
            written += 1
            done.append(row.pk)
        except aws.AwsError as exc:
            failed.append((row, exc.code))
            if isinstance(exc, aws.AwsUnavailable):
                # DynamoDB is down or throttling: the rest of the batch would fail the same way.
                failed.extend((other, exc.code) for other in newest.values() if other.pk not in done and other != row)
                break
    now = timezone.now()
    with transaction.atomic():
        DynamoOutbox.objects.filter(pk__in=done).update(done_at=now, last_error="")
        for row, code in failed:
            attempts = row.attempts + 1
            delay = min(MAX_BACKOFF_SECONDS, 2**attempts)
            DynamoOutbox.objects.filter(pk=row.pk).update(
                attempts=attempts, next_attempt_at=now + timedelta(seconds=delay), last_error=code[:255]
            )
    if failed:
        logger.warning("dynamodb sync failed", extra={"failed": len(failed), "code": failed[0][1]})
    return DrainReport(written=written, superseded=len(superseded), failed=len(failed))


def outbox_prune(*, older_than: timedelta) -> int:
    """Delete delivered rows older than the retention period; pending rows are never pruned."""
    cutoff = timezone.now() - older_than
    deleted, _ = DynamoOutbox.objects.filter(done_at__lt=cutoff).delete()
    return deleted


def outbox_backlog() -> int:
    return DynamoOutbox.objects.filter(done_at__isnull=True).count()
