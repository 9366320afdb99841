"""Webhook endpoints and the events they receive (SPEC §10).

Events are not a second record of what happened: each is derived from an audit event, in the same
transaction, by one table (`EVENT_TYPES_BY_AUDIT_KIND`). An event's `data` is built from named fields
only, never by copying the audit data, so nothing secret can slip into a body. Delivery is
`provisioning/webhooks.py`.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..audit import NewEvent, audit_append
from ..bulk import db_datetime, insert_rows
from ..models import AuditKind, WebhookDelivery, WebhookEndpoint
from ..validators import InputInvalid

CERTIFICATE_ISSUED = "certificate.issued"
CERTIFICATE_ROTATED = "certificate.rotated"
CERTIFICATE_REVOKED = "certificate.revoked"
DEVICE_REGISTERED = "device.registered"
DEVICE_RESET = "device.reset"
DEVICE_LOCKED_OUT = "device.locked_out"
EVENT_TYPES = (
    CERTIFICATE_ISSUED,
    CERTIFICATE_ROTATED,
    CERTIFICATE_REVOKED,
    DEVICE_REGISTERED,
    DEVICE_RESET,
    DEVICE_LOCKED_OUT,
)


@dataclass(frozen=True)
class Subject:
    """What an event names besides its serial: the device's thing and product (None when unknown)."""

    thing_name: str | None = None
    product: str | None = None


def _when(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return None if value is None else str(value)


# What each event type's `data` holds beyond serial, thing_name and product, from the audit event's data.
Fields = Callable[[dict[str, Any]], dict[str, Any]]


def _issued(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "certificate_id": data.get("certificate_id"),
        "fingerprint_sha256": data.get("fingerprint_sha256"),
        "key_origin": data.get("key_origin"),
    }


def _rotated(data: dict[str, Any]) -> dict[str, Any]:
    return {"certificate_id": data.get("certificate_id"), "previous_certificate_id": data.get("revoked_certificate_id")}


def _revoked(data: dict[str, Any]) -> dict[str, Any]:
    fields = {"certificate_id": data.get("certificate_id"), "reason": data.get("reason")}
    if data.get("pending_certificate_id"):
        fields["pending_certificate_id"] = data["pending_certificate_id"]
    return fields


def _rotation_revoked(data: dict[str, Any]) -> dict[str, Any]:
    # Confirming a rotation revokes the certificate it replaced.
    return {"certificate_id": data.get("revoked_certificate_id"), "reason": "rotated"}


def _registered(data: dict[str, Any]) -> dict[str, Any]:
    return {}


def _reset(data: dict[str, Any]) -> dict[str, Any]:
    return {"reason": data.get("reason"), "token_expires_at": _when(data.get("expires_at"))}


def _locked_out(data: dict[str, Any]) -> dict[str, Any]:
    return {"scope": data.get("scope"), "failures": data.get("failures")}


# The one table from audit kinds to webhook event types. An audit kind not listed here sends nothing.
EVENT_TYPES_BY_AUDIT_KIND: dict[str, tuple[tuple[str, Fields], ...]] = {
    AuditKind.CERTIFICATE_ISSUED: ((CERTIFICATE_ISSUED, _issued),),
    AuditKind.ROTATION_CONFIRMED: ((CERTIFICATE_ROTATED, _rotated), (CERTIFICATE_REVOKED, _rotation_revoked)),
    AuditKind.DEVICE_REVOKED: ((CERTIFICATE_REVOKED, _revoked),),
    AuditKind.DEVICE_REGISTERED: ((DEVICE_REGISTERED, _registered),),
    AuditKind.LEGACY_IMPORTED: ((DEVICE_REGISTERED, _registered),),
    AuditKind.DEVICE_RESET: ((DEVICE_RESET, _reset),),
    # The one `vend_throttled` event written when a serial or an address goes over its failure limit.
    AuditKind.VEND_THROTTLED: ((DEVICE_LOCKED_OUT, _locked_out),),
}


def event_body(*, event_type: str, event: NewEvent, subject: Subject, fields: Fields, now: datetime) -> dict[str, Any]:
    data = {"serial": event.serial or None, "thing_name": subject.thing_name, "product": subject.product}
    data.update(fields(event.data))
    if event_type == DEVICE_LOCKED_OUT:
        data["client_address"] = event.client_address
    return {"type": event_type, "timestamp": _when(now), "data": data}


def webhook_endpoints_enabled() -> bool:
    """Whether any endpoint is enabled: a bulk change with none names no subjects for its events and passes
    `endpoints_enabled=False` to `webhook_events_queue`."""
    return WebhookEndpoint.objects.filter(enabled=True).exists()


def webhook_events_queue(
    events: Sequence[NewEvent],
    *,
    subjects: Mapping[str, Subject],
    now: datetime | None = None,
    endpoints_enabled: bool = True,
) -> int:
    """Queue a delivery to every subscribed endpoint for each event the audit events stand for.

    Call it inside the transaction of the change, after its audit events: the deliveries commit or
    roll back with it. `endpoints_enabled` False: the caller saw, in this transaction, that no endpoint
    is enabled (the endpoints are not read again). Returns how many deliveries were queued.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("webhook events must be written inside the transaction of the change they report")
    relevant = [event for event in events if event.kind in EVENT_TYPES_BY_AUDIT_KIND]
    if not relevant or not endpoints_enabled:
        return 0
    endpoints = list(WebhookEndpoint.objects.filter(enabled=True).only("id", "event_types"))
    if not endpoints:
        return 0
    now = now or timezone.now()
    stamp = db_datetime(now)
    rows = []
    for event in relevant:
        subject = subjects.get(event.serial, Subject())
        for event_type, fields in EVENT_TYPES_BY_AUDIT_KIND[event.kind]:
            receivers = [endpoint.pk for endpoint in endpoints if endpoint.wants(event_type)]
            if not receivers:
                continue
            body = json.dumps(
                event_body(event_type=event_type, event=event, subject=subject, fields=fields, now=now),
                separators=(",", ":"),
            )
            message_id = f"msg_{uuid.uuid4().hex}"
            rows.extend(
                (endpoint_id, message_id, event_type, event.serial, body, stamp, 0, stamp, "")
                for endpoint_id in receivers
            )
    # Through insert_rows (COPY on PostgreSQL): an import of 100,000 serials queues 100,000 deliveries per endpoint.
    return insert_rows(
        WebhookDelivery,
        [
            "endpoint_id",
            "message_id",
            "event_type",
            "serial",
            "body",
            "created_at",
            "attempts",
            "next_attempt_at",
            "last_error",
        ],
        rows,
    )


# --- Endpoints ------------------------------------------------------------------------------------


def webhook_secret_generate() -> str:
    """`whsec_` and 32 random bytes in base64, the form the Standard Webhooks libraries take."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def event_types_check(event_types: Sequence[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise InputInvalid(f"unknown event type {unknown[0]!r}; the types are {', '.join(EVENT_TYPES)}")
    return [event_type for event_type in EVENT_TYPES if event_type in set(event_types)]


@dataclass(frozen=True)
class NewWebhook:
    endpoint: WebhookEndpoint
    secret: str


def webhook_add(*, url: str, event_types: Sequence[str], actor: str, description: str = "") -> NewWebhook:
    """Register an endpoint for `event_types` (none: all); the secret is returned once, to be shown once."""
    from ..webhooks import webhook_url_check

    url = webhook_url_check(url)
    types = event_types_check(event_types)
    secret = webhook_secret_generate()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            url=url, event_types=types, secret=secret, created_by=actor, description=description[:255]
        )
        audit_append(
            kind=AuditKind.WEBHOOK_ADDED,
            actor=actor,
            data={"endpoint": endpoint.pk, "url": url, "event_types": types or "all"},
        )
    return NewWebhook(endpoint=endpoint, secret=secret)


def webhook_set_enabled(*, endpoint_id: int, enabled: bool, actor: str) -> bool:
    """Disable an endpoint (it receives nothing new, and its pending deliveries wait) or enable it again.

    Returns False when it already was so.
    """
    with transaction.atomic():
        changed = WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=not enabled).update(
            enabled=enabled,
            disabled_at=None if enabled else timezone.now(),
            disabled_by="" if enabled else actor,
        )
        if not changed:
            from .common import ServiceError  # common imports this module

            if not WebhookEndpoint.objects.filter(pk=endpoint_id).exists():
                raise ServiceError(f"no webhook endpoint {endpoint_id}")
            return False
        audit_append(
            kind=AuditKind.WEBHOOK_ENABLED if enabled else AuditKind.WEBHOOK_DISABLED,
            actor=actor,
            data={"endpoint": endpoint_id},
        )
    return True
