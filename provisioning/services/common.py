"""What every service shares: its errors, its actors, and the one guarded transition of a device.

Each change to a device is one short transaction that updates the row with a conditional UPDATE (the
state the lifecycle allows the change from, plus whatever else must still hold), checks that exactly
one row changed, bumps `version`, and appends its audit event, its DynamoDB outbox entry and the
webhook deliveries its audit event stands for (`events_record`). AWS is never called inside such a
transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from .. import aws
from ..audit import NewEvent, audit_append, audit_append_many
from ..bulk import db_datetime, db_json, insert_rows, rows_table
from ..mirror import (
    ASSOCIATION_COLUMNS,
    association_item,
    association_items_from_rows,
    device_association_item,
)
from ..models import LIFECYCLE, Certificate, Device, DynamoOutbox, Product, WebhookEndpoint
from ..prepared import column, quote, selection, table
from .webhooks import EVENT_TYPES_BY_AUDIT_KIND, Subject, webhook_endpoints_enabled, webhook_events_queue

DEFAULT_PRODUCT = "default"
SYSTEM_ACTOR = "system"
DEVICE_ACTOR = "device"


class ServiceError(Exception):
    """A request a person made that cannot be carried out; the message is safe to show them."""


class DeviceNotEligible(ServiceError):
    """The device's state does not allow the action (now); the message says why and what works instead."""


@dataclass(frozen=True)
class IssuedToken:
    serial: str
    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True)
class BatchOutcome:
    """What an action over many devices did to each: done, skipped (its state does not allow it, perhaps
    since a moment ago) and failed (AWS, or anything else), each with the reason."""

    succeeded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    tokens: list[IssuedToken] = field(default_factory=list)


def issuing_advice(serial: str, then: str) -> str:
    """What to do about a device that is being issued a certificate right now: wait, then `then`."""
    return (
        f"device {serial} is being issued a certificate right now; wait for it to finish "
        f"(at most {settings.CVM_CLAIM_TIMEOUT_SECONDS} s), then {then}"
    )


def thing_name_for(serial: str) -> str:
    """The thing name a serial gets when it is registered; afterwards `Device.thing_name` is the source."""
    return f"{settings.CVM_THING_NAME_PREFIX}{serial}"


def events_record(events: list[NewEvent], *, subjects: dict[str, Subject], endpoints_enabled: bool = True) -> None:
    """Append audit events and queue the webhook events they stand for; call inside the change's transaction.

    `subjects` names each serial's thing and product for the webhook events. `endpoints_enabled` False:
    this transaction already saw that no webhook endpoint is enabled, so none is looked for again.
    """
    audit_append_many(events)
    webhook_events_queue(events, subjects=subjects, endpoints_enabled=endpoints_enabled)


def record_device_change(
    device_pk: int, *, kind: str, actor: str, client_address: str | None = None, **data: object
) -> Device:
    """Audit a device change and queue its DynamoDB item and webhook events; call inside the change's
    transaction."""
    device = Device.objects.select_related("product", "current_certificate", "pending_certificate").get(pk=device_pk)
    events_record(
        [NewEvent(kind=kind, actor=actor, serial=device.serial, client_address=client_address, data=data)],
        subjects={device.serial: Subject(thing_name=device.thing_name, product=device.product.name)},
    )
    DynamoOutbox.objects.create(serial=device.serial, version=device.version, item=device_association_item(device))
    return device


# Lookups a transition's `where` may use, and their SQL.
_OPERATORS = {"exact": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _db_value(field: Any, value: Any) -> Any:
    """A value as the driver takes it for `field` (a related object counts as its primary key)."""
    if isinstance(value, Model):
        value = value.pk
    return field.get_db_prep_save(value, connection)


def _comparison(lookup: str, value: Any) -> str:
    """How a `where` entry compares: "null", "not null" or "value" (a parameter)."""
    operator = lookup.partition("__")[2]
    if operator == "isnull":
        return "null" if value else "not null"
    if operator not in ("", *_OPERATORS):
        raise ValueError(f"a transition cannot compare with {lookup!r}")
    if value is None:
        if operator not in ("", "exact"):
            raise ValueError(f"{lookup!r} cannot compare with None")
        return "null"
    return "value"


@functools.cache
def _transition_sql(
    vendor: str, sources: tuple[str, ...], where: tuple[tuple[str, str], ...], changes: tuple[str, ...], webhooks: bool
) -> tuple[str, tuple[Any, ...], tuple[Any, ...]]:
    """The conditional UPDATE of one device with its RETURNING list; and the fields of the changed and
    the compared columns, in parameter order.

    `where` is (lookup, "null", "not null" or "value"): whether the value makes it IS NULL, IS NOT NULL
    or a comparison with a parameter. Written once per shape from the models' meta (see
    prepared.py); every value is a parameter. RETURNING gives back the row as it is now, with what its
    DynamoDB item and webhook events name (product, certificate ids) and whether any webhook endpoint is
    enabled, so nothing is read again.
    """
    meta = Device._meta
    set_fields = [meta.get_field(name) for name in ("state", *changes, "updated_at")]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in set_fields)  # type: ignore[union-attr]
    conditions = [f"{quote(meta.pk.column)} = %s", f"{column(Device, 'state')} IN ({', '.join(['%s'] * len(sources))})"]
    where_fields = []
    for lookup, compare in where:
        name, _, operator = lookup.partition("__")
        field = meta.get_field(name)
        if compare == "value":
            conditions.append(f"{quote(field.column)} {_OPERATORS[operator or 'exact']} %s")  # type: ignore[union-attr]
            where_fields.append(field)
        else:
            conditions.append(f"{quote(field.column)} IS {compare.upper()}")  # type: ignore[union-attr]
    device = table(Device)
    certificate_id = (
        f"(SELECT {column(Certificate, 'certificate_id')} FROM {table(Certificate)} "  # noqa: S608
        f"WHERE {column(Certificate, 'id')} = {device}.{{}})"
    )
    returning = [
        selection(Device).sql,
        f"(SELECT {column(Product, 'name')} FROM {table(Product)} "  # noqa: S608
        f"WHERE {column(Product, 'id')} = {device}.{column(Device, 'product')})",
        certificate_id.format(column(Device, "current_certificate")),
        certificate_id.format(column(Device, "pending_certificate")),
    ]
    if webhooks:
        enabled = column(WebhookEndpoint, "enabled")
        returning.append(f"EXISTS (SELECT 1 FROM {table(WebhookEndpoint)} WHERE {enabled} = %s)")  # noqa: S608
    sql = (
        f"UPDATE {device} SET {assignments}, {column(Device, 'version')} = {column(Device, 'version')} + 1 "  # noqa: S608
        f"WHERE {' AND '.join(conditions)} RETURNING {', '.join(returning)}"
    )
    return sql, tuple(set_fields), tuple(where_fields)


def _carry_related(device: Device, before: Device) -> None:
    """Give `device` the related objects the caller already holds, where it still points at the same rows."""
    for name in ("product", "current_certificate", "pending_certificate"):
        field = Device._meta.get_field(name)
        if field.is_cached(before) and getattr(before, field.attname) == getattr(device, field.attname):  # type: ignore[union-attr]
            field.set_cached_value(device, field.get_cached_value(before))  # type: ignore[union-attr]


def device_transition(
    device_pk: int,
    *,
    action: str,
    kind: str,
    actor: str,
    client_address: str | None = None,
    where: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    before: Device | None = None,
) -> Device | None:
    """Move one device along `action` of the lifecycle, or return None when it is no longer where it was.

    The UPDATE is conditional on the action's source states and on `where` (a claim id, a token digest,
    the current certificate …; a field name, optionally with `__gt`, `__gte`, `__lt`, `__lte` or
    `__isnull`), so two requests can never both win it, on SQLite and PostgreSQL alike. `changes` are the
    other columns it sets (values or related objects); `updated_at` and `version` always move. The
    audit event (`kind`, `data`), the outbox row and the webhook deliveries are written in the same
    transaction.

    Returns the device as the UPDATE left it (one statement: UPDATE … RETURNING). Its product and
    certificates are those of `before` (the caller's copy, read before this change) where the device
    still points at the same rows; otherwise they are read when first used. Pass `before` only when this
    transaction did not change those rows.
    """
    transition = LIFECYCLE[action]
    where, changes = where or {}, changes or {}
    webhooks = kind in EVENT_TYPES_BY_AUDIT_KIND
    sql, set_fields, where_fields = _transition_sql(
        connection.vendor,
        transition.sources,
        tuple((lookup, _comparison(lookup, value)) for lookup, value in where.items()),
        tuple(changes),
        webhooks,
    )
    now = timezone.now()
    values = [transition.target, *changes.values(), now]
    compared = [value for lookup, value in where.items() if _comparison(lookup, value) == "value"]
    params = [
        *(_db_value(field, value) for field, value in zip(set_fields, values, strict=True)),
        device_pk,
        *transition.sources,
        *(_db_value(field, value) for field, value in zip(where_fields, compared, strict=True)),
        *([True] if webhooks else []),
    ]
    columns = selection(Device)
    # No savepoint of its own: a transition that fails raises, and the caller's transaction rolls back.
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        if len(rows) != 1:
            return None
        row = rows[0]
        device: Device = columns.instance(row[: columns.width])
        product, certificate_id, pending_certificate_id, *enabled = row[columns.width :]
        events_record(
            [NewEvent(kind=kind, actor=actor, serial=device.serial, client_address=client_address, data=data or {})],
            subjects={device.serial: Subject(thing_name=device.thing_name, product=product)},
            endpoints_enabled=bool(enabled and enabled[0]),
        )
        item = association_item(
            serial=device.serial,
            state=device.state,
            version=device.version,
            product=product,
            thing_name=device.thing_name,
            token_digest=device.token_digest,
            last_request_at=device.last_request_at,
            certificate_id=certificate_id,
            pending_certificate_id=pending_certificate_id,
        )
        outbox_insert([(device.serial, device.version, db_json(item))], now=now)
    if before is not None:
        _carry_related(device, before)
    return device


def devices_transition_many(
    *,
    action: str,
    serials: list[str],
    kind: str,
    actor: str,
    data: dict[str, Any],
    now: datetime,
    changes: dict[str, Any] | None = None,
    each: dict[str, Sequence[Any]] | None = None,
) -> int:
    """The same guarded transition for many devices at once (token runs of 100,000 serials).

    `changes` are columns set alike on every device, `each` columns whose value differs: a sequence of
    values per column, in the order of `serials` (all values database-ready). The serials with their
    own values go into a temporary table, and one conditional UPDATE … FROM it moves every device whose
    state still allows the action, returning what the outbox items are made of; then one audit event per
    device and their outbox rows. Returns how many rows changed: the caller rolls the transaction back
    when that is not all of them. Call it inside the transaction.
    """
    if not serials:
        return 0
    transition = LIFECYCLE[action]
    changes, each = changes or {}, each or {}
    devices = table(Device)  # names from the model, quoted; every value below is a parameter
    assignments = ", ".join(
        [
            f"{quote('state')} = %s",
            *(f"{quote(c)} = %s" for c in changes),
            *(f"{quote(c)} = bulk_rows.{quote(c)}" for c in each),
            f"{quote('updated_at')} = %s",
        ]
    )
    states = ", ".join(["%s"] * len(transition.sources))
    returning = ", ".join(f"{devices}.{quote(name)}" for name in ASSOCIATION_COLUMNS)
    sql = (
        f"UPDATE {devices} SET {assignments}, {quote('version')} = {devices}.{quote('version')} + 1 "  # noqa: S608
        f"FROM bulk_rows WHERE {devices}.{quote('serial')} = bulk_rows.{quote('serial')} "
        f"AND {devices}.{quote('state')} IN ({states}) RETURNING {returning}"
    )
    values = zip(serials, *each.values(), strict=True)
    with rows_table(Device, ["serial", *each], values), connection.cursor() as cursor:
        cursor.execute(sql, [transition.target, *changes.values(), db_datetime(now), *transition.sources])
        updated = cursor.fetchall()
    if len(updated) != len(serials):
        return len(updated)
    # Webhook events name each device's thing and product, when the kind has any and an endpoint is
    # enabled to receive them: a token run has none.
    webhooks = kind in EVENT_TYPES_BY_AUDIT_KIND and webhook_endpoints_enabled()
    events_record(
        [NewEvent(kind=kind, actor=actor, serial=serial, data=data) for serial in serials],
        subjects={
            item["productId"]: Subject(thing_name=item["thingName"], product=item["product"])
            for item in association_items_from_rows(updated)
        }
        if webhooks
        else {},
        endpoints_enabled=webhooks,
    )
    # In the order the UPDATE returned the devices: each has one item here, and the order between
    # devices means nothing to the mirror. The items are made as COPY takes them.
    outbox_insert(association_items_from_rows(updated, encoded=True), now=now)
    return len(updated)


def outbox_insert(items: Iterable[tuple[str, int, str]], *, now: datetime) -> None:
    """Queue the DynamoDB items of devices changed in this transaction: (serial, version, the item as
    `db_json` encodes it)."""
    stamp = db_datetime(now)
    insert_rows(
        DynamoOutbox,
        ["serial", "version", "item", "created_at", "attempts", "last_error"],
        ((serial, version, item, stamp, 0, "") for serial, version, item in items),
    )


LOGIN_FAILURE_EVENTS_PER_ADDRESS = 20
LOGIN_FAILURE_WINDOW_SECONDS = 15 * 60


def staff_login_record(*, username: str, succeeded: bool, client_address: str | None) -> None:
    """Audit a login to the staff portal; never the password.

    Failed logins are recorded up to LOGIN_FAILURE_EVENTS_PER_ADDRESS per address per quarter hour (the
    last of them says so): someone spraying usernames from one address cannot grow the log without
    bound. django-axes still counts every attempt for the lockout.
    """
    from ..cache import window_increment
    from ..models import AuditKind

    data: dict[str, Any] = {}
    if not succeeded:
        count = window_increment(f"cvm:login-failures:{client_address or '-'}", LOGIN_FAILURE_WINDOW_SECONDS)
        if count > LOGIN_FAILURE_EVENTS_PER_ADDRESS:
            return
        if count == LOGIN_FAILURE_EVENTS_PER_ADDRESS:
            data = {"note": "further failed logins from this address are not recorded for 15 minutes"}
    with transaction.atomic():
        audit_append(
            kind=AuditKind.ADMIN_LOGIN if succeeded else AuditKind.ADMIN_LOGIN_FAILED,
            actor=username[:150],
            client_address=client_address,
            data=data,
        )


def aws_failure_advice(exc: aws.AwsError) -> str:
    """What staff should do about an AWS failure: wait and retry, or fix the configuration first."""
    if isinstance(exc, aws.AwsRejected):
        return (
            f"{exc.service} refused {exc.operation} ({exc.code}): check the portal's AWS configuration and "
            "permissions; retrying will not help until that is fixed"
        )
    return f"{exc.service} did not answer {exc.operation} ({exc.code}); try again in a minute"
