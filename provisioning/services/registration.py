"""Registering serials: the CSV import (command and admin) and the admin's single "add device"."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from ..audit import NewEvent
from ..bulk import db_datetime, db_json, insert_rows, rows_table
from ..mirror import AssociationItemsJson
from ..models import AuditKind, Device, DeviceState, Product
from ..validators import (
    PRODUCT_NAME_MESSAGE,
    PRODUCT_NAME_RE,
    SERIAL_RE,
    InputInvalid,
    attribute_check,
    attribute_count_check,
    product_name_check,
)
from .common import DEFAULT_PRODUCT, ServiceError, events_record, outbox_insert, thing_name_for
from .webhooks import Subject, webhook_endpoints_enabled


@dataclass(frozen=True)
class ImportRow:
    line: int
    serial: str
    product: str
    # The device's own thing attributes (validators.attributes_check), for a device that is new.
    attributes: dict[str, str] = field(default_factory=dict)
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


def _header(reader: Any) -> tuple[int | None, dict[int, str]]:
    """(index of the product column, {index: attribute name}) from the header; ImportInvalid if wrong."""
    try:
        raw = [column.strip() for column in next(reader)]
    except StopIteration:
        raise ImportInvalid(
            ["line 1: the file is empty; expected the header serial[,product][,attribute ...]"]
        ) from None
    except csv.Error as exc:
        raise ImportInvalid([f"line 1: {exc}"]) from None
    names = [column.lower() for column in raw]
    if not names or names[0] != "serial":
        raise ImportInvalid(["line 1: the header must start with serial (then product, and thing attributes)"])
    product_column = names.index("product") if "product" in names else None
    attributes = {index: raw[index] for index in range(1, len(raw)) if index != product_column}
    errors = []
    for index, name in attributes.items():
        try:
            attribute_check(name, "")
        except InputInvalid as exc:
            errors.append(f"line 1: column {index + 1}: {exc}")
    repeated = sorted({name for name in attributes.values() if list(attributes.values()).count(name) > 1})
    errors.extend(f"line 1: column {name!r} appears twice" for name in repeated)
    if names.count("serial") > 1 or names.count("product") > 1:
        errors.append("line 1: serial and product may appear once each")
    if errors:
        raise ImportInvalid(errors)
    return product_column, attributes


def serials_parse_csv(text: str, *, default_product: str | None = None) -> list[ImportRow]:
    """Parse `serial[,product][,attribute ...]` CSV; raise ImportInvalid listing every bad line, or return
    all rows.

    Columns after serial other than `product` are thing attributes: the header cell is the attribute's
    name, each row's cell its value (an empty cell: the device has no such attribute). Names and values
    are checked against AWS IoT's rules here; how many a thing may have depends on its product's thing
    type, which `devices_import` checks.
    """
    reader = csv.reader(io.StringIO(text))
    product_column, attribute_columns = _header(reader)
    width = 1 + (product_column is not None) + len(attribute_columns)
    rows: list[ImportRow] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    # A file of 100,000 rows names a handful of products: each is checked once.
    good_products: set[str] = set()
    try:
        for values in reader:
            line = reader.line_num
            if not "".join(values).strip():  # no cells, or only blank ones
                continue
            if len(values) > width:
                errors.append(f"line {line}: expected {width} column(s), found {len(values)}")
                continue
            serial = values[0].strip()
            named = (
                values[product_column].strip() if product_column is not None and product_column < len(values) else ""
            )
            product = named or default_product or DEFAULT_PRODUCT
            attributes = (
                {
                    name: values[index].strip()
                    for index, name in attribute_columns.items()
                    if index < len(values) and values[index].strip()
                }
                if attribute_columns
                else {}
            )
            if not SERIAL_RE.match(serial):
                errors.append(f"line {line}: {serial[:70]!r} is not a valid serial")
            elif serial in seen:
                errors.append(f"line {line}: serial {serial} repeats line {seen[serial]}")
            elif product not in good_products and not PRODUCT_NAME_RE.match(product):
                errors.append(f"line {line}: {product[:70]!r}: {PRODUCT_NAME_MESSAGE}")
            else:
                good_products.add(product)
                bad = _attribute_problem(attributes) if attributes else None
                if bad:
                    errors.append(f"line {line}: {bad}")
                    continue
                seen[serial] = line
                rows.append(
                    ImportRow(line=line, serial=serial, product=product, attributes=attributes, named=bool(named))
                )
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    if errors:
        raise ImportInvalid(errors)
    return rows


def _attribute_problem(attributes: dict[str, str]) -> str | None:
    for name, value in attributes.items():
        try:
            attribute_check(name, value)
        except InputInvalid as exc:
            return str(exc)
    return None


def _check_attribute_counts(rows: list[ImportRow], typed_products: set[str]) -> None:
    """How many attributes each device may have depends on whether its product has a thing type."""
    errors = []
    for row in rows:
        try:
            attribute_count_check(len(row.attributes), has_thing_type=row.product in typed_products)
        except InputInvalid as exc:
            errors.append(f"line {row.line}: {exc}")
    if errors:
        raise ImportInvalid(errors)


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
        typed = set(
            Product.objects.filter(name__in=product_names).exclude(thing_type="").values_list("name", flat=True)
        )
        _check_attribute_counts(rows, typed)  # before anything is written
        existing = set(Product.objects.filter(name__in=product_names).values_list("name", flat=True))
        missing = [Product(name=name) for name in product_names if name not in existing]
        Product.objects.bulk_create(missing)
        product_ids = dict(Product.objects.filter(name__in=product_names).values_list("name", "id"))

        known = _known_serials([row.serial for row in rows])
        new_rows = [row for row in rows if row.serial not in known]
        stamp = db_datetime(now)
        # One audit data dict per product, so the audit log encodes each once (audit_append_many).
        registered = {name: {"product": name} for name in product_names}
        # The device rows and the DynamoDB items are made as COPY (PostgreSQL) takes them, so the server
        # writes one batch while the next is made. New devices are all alike but for serial, product,
        # thing name and attributes: their items need no query.
        insert_rows(
            Device,
            ["serial", "product_id", "state", "token_digest", "thing_name", "attributes", "aws_cleanup_pending",
             "version", "created_at", "updated_at", "import_batch_id"],
            ((row.serial, product_ids[row.product], DeviceState.REGISTERED, "", thing_name_for(row.serial),
              db_json(row.attributes) if row.attributes else "{}", False, 1, stamp, stamp, batch)
             for row in new_rows),
        )  # fmt: skip
        events = [
            NewEvent(kind=AuditKind.DEVICE_REGISTERED, actor=actor, serial=row.serial, data=registered[row.product])
            for row in new_rows
        ]
        events.append(
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
        )
        # Webhook events name each device's thing and product; with no endpoint enabled (most imports)
        # there is nothing to name them for.
        webhooks = webhook_endpoints_enabled()
        subjects = (
            {row.serial: Subject(thing_name=thing_name_for(row.serial), product=row.product) for row in new_rows}
            if webhooks
            else {}
        )
        events_record(events, subjects=subjects, endpoints_enabled=webhooks)
        item_json = AssociationItemsJson()
        outbox_insert(
            (
                (row.serial, 1, item_json(
                    serial=row.serial, state=DeviceState.REGISTERED, version=1, product=row.product,
                    thing_name=thing_name_for(row.serial), token_digest="", last_request_at=None, certificate_id=None,
                ))
                for row in new_rows
            ),
            now=now,
        )  # fmt: skip
    return ImportReport(created=len(new_rows), already_known=len(known), products_created=len(missing))


def _known_serials(serials: list[str]) -> set[str]:
    """Which of `serials` are registered already: one join against them, not a query per chunk."""
    if len(serials) <= 900:
        return set(Device.objects.filter(serial__in=serials).values_list("serial", flat=True))
    device = connection.ops.quote_name(Device._meta.db_table)
    with rows_table(Device, ["serial"], ((serial,) for serial in serials)), connection.cursor() as cursor:
        cursor.execute(f"SELECT {device}.serial FROM {device} JOIN bulk_rows ON bulk_rows.serial = {device}.serial")  # noqa: S608
        return {serial for (serial,) in cursor.fetchall()}


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
