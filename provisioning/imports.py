"""Serials imported through the admin: the upload stays on the server and a worker imports it.

The admin previews an uploaded file and keeps it as an ImportBatch; the confirmation names the batch
(a form that carried the file back would have to hold millions of rows, and Django refuses such a form
with a bare 400). `run_imports`, the worker `make run` starts beside `sync_dynamodb`, imports confirmed
batches one at a time with the services `import_serials` uses, so an import through the admin keeps
every guarantee of one from the command line: all rows or none, products created, one audit event per
device and one for the import, a DynamoDB outbox row per new device.

Progress is reported by phase, not by row. The rows are written in one transaction, so that a failure
anywhere leaves nothing behind; what that transaction has written is invisible until it commits, and on
SQLite no other connection may write while it runs, so a row count could not be reported honestly.
The admin shows instead: queued, reading and checking the file, writing N serials (since when), done.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, OperationalError, close_old_connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from .bulk import chunks
from .models import Device, DeviceState, ImportBatch, ImportState, Product
from .services import ImportInvalid, ImportRow, ServiceError, devices_import, serials_parse_csv

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 200
# A batch nobody confirmed is dropped after this; its file should not stay in the database for ever.
CONFIRM_WITHIN = timedelta(hours=24)
# A claim older than this, on a batch still being read, belongs to a worker that died. Taking it over
# is always safe (the import checks its claim in the transaction that writes the rows); this only
# bounds how long a crashed worker's batch waits.
CLAIM_TIMEOUT = timedelta(minutes=2)
MAX_ATTEMPTS = 3
IDLE_SLEEP_SECONDS = 1.0
FAILURE_SLEEP_SECONDS = 2.0
EXPIRE_EVERY_SECONDS = 60.0


class _ClaimLost(Exception):
    """Another worker took the batch over; this one must not write anything."""


@dataclass(frozen=True)
class ImportPreview:
    rows: list[ImportRow]
    new_rows: list[ImportRow]
    new_count: int
    known_count: int
    # [name, new rows, whether the import would create the product], most rows first
    products: list[list[Any]]
    unnamed_count: int
    known_rows: list[list[Any]]  # [line, serial, its state now] of the first known serials


def import_preview(*, text: str, default_product: str | None) -> ImportPreview:
    """What importing `text` would do; raises ImportInvalid listing every bad line."""
    rows = serials_parse_csv(text, default_product=default_product)
    known: dict[str, str] = {}
    for chunk in chunks([row.serial for row in rows]):
        known.update(Device.objects.filter(serial__in=chunk).values_list("serial", "state"))
    new_rows = [row for row in rows if row.serial not in known]
    per_product = Counter(row.product for row in new_rows)
    existing = set(Product.objects.filter(name__in=list(per_product)).values_list("name", flat=True))
    return ImportPreview(
        rows=rows,
        new_rows=new_rows[:PREVIEW_ROWS],
        new_count=len(new_rows),
        known_count=len(known),
        products=[[name, count, name not in existing] for name, count in per_product.most_common()],
        unnamed_count=sum(1 for row in new_rows if not row.named),
        known_rows=[
            [row.line, row.serial, DeviceState(known[row.serial]).label] for row in rows if row.serial in known
        ][:PREVIEW_ROWS],
    )


def import_batch_create(*, file_name: str, content: bytes, default_product: str | None, actor: str) -> ImportBatch:
    """Check an uploaded file and keep it, waiting for confirmation; raises ImportInvalid or ServiceError."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ServiceError("the file is not UTF-8 text") from None
    preview = import_preview(text=text, default_product=default_product)
    return ImportBatch.objects.create(
        file_name=file_name[:255],
        file_size=len(content),
        file_sha256=hashlib.sha256(content).hexdigest(),
        content=content,
        default_product=default_product or "",
        uploaded_by=actor,
        uploaded_at=timezone.now(),
        row_count=len(preview.rows),
        new_count=preview.new_count,
        known_count=preview.known_count,
        preview=[[row.line, row.serial, row.product] for row in preview.new_rows],
        products=preview.products,
        unnamed_count=preview.unnamed_count,
        known_preview=preview.known_rows,
    )


def import_batch_repreview(*, batch_id: uuid.UUID, default_product: str | None, actor: str) -> ImportBatch | None:
    """The same upload previewed again with another product for rows that name none; None when the batch
    is no longer waiting for confirmation. The old preview is dropped, so only the new one can be confirmed.
    """
    with transaction.atomic():
        batch = ImportBatch.objects.filter(
            pk=batch_id, state=ImportState.PREVIEWED, uploaded_at__gt=timezone.now() - CONFIRM_WITHIN
        ).first()
        if batch is None:
            return None
        dropped = ImportBatch.objects.filter(pk=batch_id, state=ImportState.PREVIEWED).update(
            state=ImportState.EXPIRED, content=b"", error="previewed again with another product"
        )
        if not dropped:
            return None
        return import_batch_create(
            file_name=batch.file_name, content=bytes(batch.content), default_product=default_product, actor=actor
        )


def import_batch_confirm(*, batch_id: uuid.UUID, actor: str) -> bool:
    """Queue a previewed batch for the worker. False when it was confirmed already or has expired.

    A conditional UPDATE, so a double click, a reloaded page or two people at once confirm it once.
    """
    now = timezone.now()
    confirmed = ImportBatch.objects.filter(
        pk=batch_id, state=ImportState.PREVIEWED, uploaded_at__gt=now - CONFIRM_WITHIN
    ).update(state=ImportState.QUEUED, confirmed_by=actor, confirmed_at=now)
    return confirmed == 1


def _claim(now: datetime) -> tuple[uuid.UUID, uuid.UUID] | None:
    """Take the oldest confirmed batch (or one whose worker died); returns (batch id, claim id)."""
    stale = Q(state=ImportState.IMPORTING, started_at__lt=now - CLAIM_TIMEOUT)
    for batch_id, state, old_claim, attempts in (
        ImportBatch.objects.filter(Q(state=ImportState.QUEUED) | stale)
        .order_by("confirmed_at")
        .values_list("pk", "state", "claim_id", "attempts")[:10]
    ):
        pending = ImportBatch.objects.filter(pk=batch_id, state=state, claim_id=old_claim)
        if attempts >= MAX_ATTEMPTS:
            pending.update(
                state=ImportState.FAILED,
                finished_at=now,
                content=b"",
                error=f"the import worker stopped {attempts} times while importing it; nothing was imported",
            )
            continue
        claim_id = uuid.uuid4()
        taken = pending.update(
            state=ImportState.IMPORTING,
            claim_id=claim_id,
            attempts=F("attempts") + 1,
            started_at=now,
            writing_started_at=None,
        )
        if taken:
            return batch_id, claim_id
    return None


def _finish(batch_id: uuid.UUID, claim_id: uuid.UUID, **fields: object) -> None:
    ImportBatch.objects.filter(pk=batch_id, claim_id=claim_id, state=ImportState.IMPORTING).update(**fields)


def _import_claimed(batch_id: uuid.UUID, claim_id: uuid.UUID) -> None:
    batch = ImportBatch.objects.filter(pk=batch_id, claim_id=claim_id, state=ImportState.IMPORTING).first()
    if batch is None:
        raise _ClaimLost
    rows = serials_parse_csv(bytes(batch.content).decode("utf-8-sig"), default_product=batch.default_product or None)
    _finish(batch_id, claim_id, writing_started_at=timezone.now())
    with transaction.atomic():
        # First, and held until commit: the batch row. A worker taking over a claim it thinks stale
        # waits for this transaction and then finds the batch imported; if it took over first, this
        # import finds its claim gone and writes nothing.
        held = ImportBatch.objects.filter(pk=batch_id, claim_id=claim_id, state=ImportState.IMPORTING).update(
            state=ImportState.IMPORTING
        )
        if not held:
            raise _ClaimLost
        report = devices_import(
            rows=rows,
            actor=batch.confirmed_by,
            note={"batch": str(batch_id), "file": batch.file_name, "uploaded_by": batch.uploaded_by},
            import_batch_id=batch_id,
        )
        ImportBatch.objects.filter(pk=batch_id).update(
            state=ImportState.IMPORTED,
            finished_at=timezone.now(),
            created_count=report.created,
            already_known_count=report.already_known,
            products_created=report.products_created,
            content=b"",
            error="",
        )


def import_batch_run_next() -> ImportBatch | None:
    """Import the oldest confirmed batch, if there is one; returns it as it ended."""
    claimed = _claim(timezone.now())
    if claimed is None:
        return None
    batch_id, claim_id = claimed
    try:
        _import_claimed(batch_id, claim_id)
    except _ClaimLost:
        logger.warning("import taken over by another worker", extra={"batch": str(batch_id)})
    except (OperationalError, IntegrityError) as exc:
        # The database was busy or gone, or a serial was registered meanwhile: nothing was written
        # (the transaction rolled back), so the batch is simply tried again, a few times at most.
        logger.warning("import will be retried", extra={"batch": str(batch_id), "error": str(exc)})
        _finish(batch_id, claim_id, state=ImportState.QUEUED, claim_id=None, error=f"retrying: {exc}"[:500])
    except (ImportInvalid, ServiceError) as exc:
        _finish(batch_id, claim_id, state=ImportState.FAILED, finished_at=timezone.now(), content=b"", error=str(exc))
    except Exception:
        # Anything else is a fault of ours; the batch ends failed (nothing was written) and the worker
        # keeps serving the next ones.
        logger.exception("import failed", extra={"batch": str(batch_id)})
        _finish(
            batch_id,
            claim_id,
            state=ImportState.FAILED,
            finished_at=timezone.now(),
            content=b"",
            error="internal error; nothing was imported (the worker's log has the details)",
        )
    return ImportBatch.objects.defer("content").get(pk=batch_id)


def imports_expire() -> int:
    """Drop the files of batches nobody confirmed in time."""
    return ImportBatch.objects.filter(
        state=ImportState.PREVIEWED, uploaded_at__lte=timezone.now() - CONFIRM_WITHIN
    ).update(state=ImportState.EXPIRED, content=b"")


def imports_run_pending() -> list[ImportBatch]:
    """Import every batch confirmed so far (`run_imports --once`, tests)."""
    done = []
    while (batch := import_batch_run_next()) is not None:
        done.append(batch)
    imports_expire()
    return done


def imports_follow(*, stop: threading.Event) -> None:
    """Keep importing confirmed batches until `stop` is set; look again every second when idle."""
    last_expiry = 0.0
    while not stop.is_set():
        try:
            batch = import_batch_run_next()
            if time.monotonic() - last_expiry > EXPIRE_EVERY_SECONDS:
                imports_expire()
                last_expiry = time.monotonic()
        except DatabaseError:
            logger.warning("import worker lost the database; retrying")
            close_old_connections()
            stop.wait(FAILURE_SLEEP_SECONDS)
            continue
        if batch is None:
            stop.wait(IDLE_SLEEP_SECONDS)
