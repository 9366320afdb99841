"""What every service shares: its errors, its actors, and the one guarded transition of a device.

Each change to a device is one short transaction that updates the row with a conditional UPDATE (the
state the lifecycle allows the change from, plus whatever else must still hold), checks that exactly
one row changed, bumps `version`, and appends its audit event, its DynamoDB outbox entry and the
webhook deliveries its audit event stands for (`events_record`). AWS is never called inside such a
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from .. import aws
from ..audit import NewEvent, audit_append, audit_append_many
from ..bulk import db_datetime, db_json, insert_rows, rows_table
from ..mirror import ASSOCIATION_COLUMNS, association_items_from_rows, device_association_item
from ..models import LIFECYCLE, Device, DynamoOutbox
from .webhooks import Subject, webhook_events_queue

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


def events_record(events: list[NewEvent], *, subjects: dict[str, Subject]) -> None:
    """Append audit events and queue the webhook events they stand for; call inside the change's transaction.

    `subjects` names each serial's thing and product for the webhook events.
    """
    audit_append_many(events)
    webhook_events_queue(events, subjects=subjects)


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
) -> Device | None:
    """Move one device along `action` of the lifecycle, or return None when it is no longer where it was.

    The UPDATE is conditional on the action's source states and on `where` (a claim id, a token digest,
    the current certificate …), so two requests can never both win it, on SQLite and PostgreSQL alike.
    `changes` are the other columns it sets; `updated_at` and `version` always move. The audit event
    (`kind`, `data`) and the outbox row are written in the same transaction. Returns the device as it is
    now, read back with its product and current certificate.
    """
    transition = LIFECYCLE[action]
    with transaction.atomic():
        updated = Device.objects.filter(pk=device_pk, state__in=transition.sources, **(where or {})).update(
            state=transition.target, version=F("version") + 1, updated_at=timezone.now(), **(changes or {})
        )
        if updated != 1:
            return None
        return record_device_change(device_pk, kind=kind, actor=actor, client_address=client_address, **(data or {}))


def devices_transition_many(
    *, action: str, rows: list[tuple[str, dict[str, Any]]], kind: str, actor: str, data: dict[str, Any], now: datetime
) -> int:
    """The same guarded transition for many devices at once (token runs of 100,000 serials).

    `rows` are (serial, changes) with the same columns in every row. The rows go into a temporary table
    and one conditional UPDATE … FROM it moves every device whose state still allows the action,
    returning what the outbox items are made of; then one audit event per device and their outbox rows.
    Returns how many rows changed: the caller rolls the transaction back when that is not all of them.
    Call it inside the transaction.
    """
    if not rows:
        return 0
    transition = LIFECYCLE[action]
    columns = list(rows[0][1])
    quote = connection.ops.quote_name
    table = quote(Device._meta.db_table)  # from the model; every value below is a parameter
    assignments = ", ".join(
        [
            f"{quote('state')} = %s",
            *(f"{quote(c)} = bulk_rows.{quote(c)}" for c in columns),
            f"{quote('updated_at')} = %s",
        ]
    )
    states = ", ".join(["%s"] * len(transition.sources))
    returning = ", ".join(f"{table}.{quote(column)}" for column in ASSOCIATION_COLUMNS)
    sql = (
        f"UPDATE {table} SET {assignments}, {quote('version')} = {table}.{quote('version')} + 1 "  # noqa: S608
        f"FROM bulk_rows WHERE {table}.{quote('serial')} = bulk_rows.{quote('serial')} "
        f"AND {table}.{quote('state')} IN ({states}) RETURNING {returning}"
    )
    values = ((serial, *(changes[column] for column in columns)) for serial, changes in rows)
    with rows_table(Device, ["serial", *columns], values), connection.cursor() as cursor:
        cursor.execute(sql, [transition.target, db_datetime(now), *transition.sources])
        updated = cursor.fetchall()
    if len(updated) != len(rows):
        return len(updated)
    items = association_items_from_rows(updated)
    serials = [serial for serial, _ in rows]
    events_record(
        [NewEvent(kind=kind, actor=actor, serial=serial, data=data) for serial in serials],
        subjects={
            serial: Subject(thing_name=item["thingName"], product=item["product"]) for serial, item in items.items()
        },
    )
    outbox_insert([items[serial] for serial in serials], now=now)
    return len(updated)


def outbox_insert(items: list[dict], *, now: datetime) -> None:
    """Queue the DynamoDB items of many devices changed in this transaction."""
    stamp = db_datetime(now)
    insert_rows(
        DynamoOutbox,
        ["serial", "version", "item", "created_at", "attempts", "last_error"],
        ((item["productId"], item["version"], db_json(item), stamp, 0, "") for item in items),
    )


LOGIN_FAILURE_EVENTS_PER_ADDRESS = 20
LOGIN_FAILURE_WINDOW_SECONDS = 15 * 60


def staff_login_record(*, username: str, succeeded: bool, client_address: str | None) -> None:
    """Audit a login to the staff portal; never the password.

    Failed logins are recorded up to LOGIN_FAILURE_EVENTS_PER_ADDRESS per address per quarter hour (the
    last of them says so): someone spraying usernames from one address cannot grow the log without
    bound. django-axes still counts every attempt for the lockout.
    """
    from django.core.cache import cache

    from ..models import AuditKind

    data: dict[str, Any] = {}
    if not succeeded:
        key = f"cvm:login-failures:{client_address or '-'}"
        cache.add(key, 0, timeout=LOGIN_FAILURE_WINDOW_SECONDS)
        try:
            count = cache.incr(key)
        except ValueError:  # evicted between add and incr
            count = 1
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
            f"AWS IoT refused {exc.operation} ({exc.code}): check the portal's AWS configuration and "
            "permissions; retrying will not help until that is fixed"
        )
    return f"AWS IoT did not answer {exc.operation} ({exc.code}); try again in a minute"
