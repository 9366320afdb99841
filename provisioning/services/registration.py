"""Registering serials: the CSV import (command and admin) and the admin's single "add device"."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from ..audit import NewEvent, audit_append_many
from ..bulk import chunks, db_datetime, insert_rows
from ..models import AuditKind, Device, DeviceState, Product
from ..selectors import association_item
from ..validators import PRODUCT_NAME_MESSAGE, PRODUCT_NAME_RE, SERIAL_RE, InputInvalid, product_name_check
from .common import DEFAULT_PRODUCT, ServiceError, outbox_insert, thing_name_for


@dataclass(frozen=True)
class ImportRow:
    line: int
    serial: str
    product: str
    # False when the row's product cell was empty and `product` is the default (the admin warns of it).
    named: bool = True


@dataclass(frozen=True)
class ImportReport:
    created: int
    already_known: int
    products_created: int


class ImportInvalid(ServiceError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} invalid row(s); nothing was imported. " + "; ".join(errors[:5]))
        self.errors = errors


def serials_parse_csv(text: str, *, default_product: str | None = None) -> list[ImportRow]:
    """Parse `serial[,product]` CSV; raise ImportInvalid listing every bad line, or return all rows."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [column.strip().lower() for column in next(reader)]
    except StopIteration:
        raise ImportInvalid(["line 1: the file is empty; expected the header serial[,product]"]) from None
    except csv.Error as exc:
        raise ImportInvalid([f"line 1: {exc}"]) from None
    if header not in (["serial"], ["serial", "product"]):
        raise ImportInvalid(["line 1: the header must be serial or serial,product"])
    rows: list[ImportRow] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    try:
        for values in reader:
            line = reader.line_num
            if not values or all(not value.strip() for value in values):
                continue
            if len(values) > len(header):
                errors.append(f"line {line}: expected {len(header)} column(s), found {len(values)}")
                continue
            serial = values[0].strip()
            named = values[1].strip() if len(values) > 1 else ""
            product = named or default_product or DEFAULT_PRODUCT
            if not SERIAL_RE.match(serial):
                errors.append(f"line {line}: {serial[:70]!r} is not a valid serial")
            elif serial in seen:
                errors.append(f"line {line}: serial {serial} repeats line {seen[serial]}")
            elif not PRODUCT_NAME_RE.match(product):
                errors.append(f"line {line}: {product[:70]!r}: {PRODUCT_NAME_MESSAGE}")
            else:
                seen[serial] = line
                rows.append(ImportRow(line=line, serial=serial, product=product, named=bool(named)))
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    if errors:
        raise ImportInvalid(errors)
    return rows


def devices_import(
    *, rows: list[ImportRow], actor: str, note: dict[str, str] | None = None, import_batch_id: Any = None
) -> ImportReport:
    """Register every new serial in one transaction; serials already known are left as they are.

    `note` is added to the import's audit event (the admin names its upload there); `import_batch_id`
    links the new devices to the admin upload they came from.
    """
    now = timezone.now()
    batch = Device._meta.get_field("import_batch").get_db_prep_value(import_batch_id, connection)
    with transaction.atomic():
        product_names = sorted({row.product for row in rows})
        existing = set(Product.objects.filter(name__in=product_names).values_list("name", flat=True))
        missing = [Product(name=name) for name in product_names if name not in existing]
        Product.objects.bulk_create(missing)
        product_ids = dict(Product.objects.filter(name__in=product_names).values_list("name", "id"))

        known: set[str] = set()
        for chunk in chunks([row.serial for row in rows]):
            known.update(Device.objects.filter(serial__in=chunk).values_list("serial", flat=True))
        new_rows = [row for row in rows if row.serial not in known]
        stamp = db_datetime(now)
        insert_rows(
            Device,
            ["serial", "product_id", "state", "token_digest", "thing_name", "aws_cleanup_pending", "version",
             "created_at", "updated_at", "import_batch_id"],
            ((row.serial, product_ids[row.product], DeviceState.REGISTERED, "", thing_name_for(row.serial), False, 1,
              stamp, stamp, batch) for row in new_rows),
        )  # fmt: skip
        audit_append_many(
            [
                NewEvent(
                    kind=AuditKind.DEVICE_REGISTERED, actor=actor, serial=row.serial, data={"product": row.product}
                )
                for row in new_rows
            ]
            + [
                NewEvent(
                    kind=AuditKind.SERIALS_IMPORTED,
                    actor=actor,
                    data={
                        **(note or {}),
                        "created": len(new_rows),
                        "already_known": len(known),
                        "products_created": len(missing),
                    },
                )
            ]
        )
        # New devices are all alike but for serial, product and thing name: their items need no query.
        outbox_insert(
            [
                association_item(
                    serial=row.serial, state=DeviceState.REGISTERED, version=1, product=row.product,
                    thing_name=thing_name_for(row.serial), token_digest="", last_request_at=None, certificate_id=None,
                )
                for row in new_rows
            ],
            now=now,
        )  # fmt: skip
    return ImportReport(created=len(new_rows), already_known=len(known), products_created=len(missing))


def device_register(*, serial: str, product_name: str, actor: str) -> Device:
    """Register one serial (the admin's "add device")."""
    if not SERIAL_RE.match(serial):
        raise ServiceError(f"{serial[:70]!r} is not a valid serial")
    try:
        product_name_check(product_name or DEFAULT_PRODUCT)
    except InputInvalid as exc:
        raise ServiceError(str(exc)) from None
    if Device.objects.filter(serial=serial).exists():
        raise ServiceError(f"serial {serial} is already registered")
    devices_import(rows=[ImportRow(line=1, serial=serial, product=product_name or DEFAULT_PRODUCT)], actor=actor)
    return Device.objects.select_related("product").get(serial=serial)
