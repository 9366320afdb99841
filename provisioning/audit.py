"""The tamper-evident audit log: append under a lock, verify by walking the keyed hash chain.

Each event's `hash` is an HMAC-SHA256, under `CVM_AUDIT_HMAC_KEY`, of its content and its predecessor's
hash. The key lives outside the database, so someone who can write the database but does not hold the
key can neither edit an event and recompute the chain after it nor forge a new tail. Deleting the newest
events and rewinding the head is caught by anchors: `anchor_audit` copies the head to an append-only
sink outside the database, and `verify_audit --anchors` checks every anchored event is still there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from .bulk import db_datetime, db_json, insert_rows
from .models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64


def audit_keys() -> list[bytes]:
    """The current key first, then the fallbacks still accepted while verifying (key rotation)."""
    return [key.encode() for key in [settings.CVM_AUDIT_HMAC_KEY, *settings.CVM_AUDIT_HMAC_KEY_FALLBACKS]]


def _body(
    seq: int,
    created_at: datetime,
    kind: str,
    actor: str,
    serial: str,
    client_address: str | None,
    data: dict[str, Any],
    prev_hash: str,
) -> bytes:
    """Canonical JSON (sorted keys, fixed separators), so the same row always hashes the same, whatever
    database stored it."""
    return json.dumps(
        [seq, created_at.astimezone(UTC).isoformat(), kind, actor, serial, client_address, data, prev_hash],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _hash(*fields: Any, key: bytes | None = None) -> str:
    """HMAC-SHA256 over an event's content and its predecessor's hash, under the current key."""
    return hmac.new(key or audit_keys()[0], _body(*fields), hashlib.sha256).hexdigest()


def _event_fields(event: AuditEvent) -> tuple[Any, ...]:
    return (
        event.seq,
        event.created_at,
        event.kind,
        event.actor,
        event.serial,
        event.client_address,
        event.data,
        event.prev_hash,
    )


def _event_hash_matches(event: AuditEvent, keys: list[bytes]) -> bool:
    """Whether the event's hash is its HMAC under one of the keys (written before or after a rotation)."""
    body = _body(*_event_fields(event))
    return any(hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), event.hash) for key in keys)


def legacy_sha256(event: AuditEvent) -> str:
    """The plain SHA-256 chain the log used before it was keyed (the keying migration checks it)."""
    return hashlib.sha256(_body(*_event_fields(event))).hexdigest()


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """`data` as the database will give it back (JSON types only), so the hash matches on reading."""
    if all(isinstance(value, str | int | bool | type(None)) for value in data.values()):
        return data
    return json.loads(json.dumps(data, default=str))


@dataclass(frozen=True)
class NewEvent:
    kind: str
    actor: str
    serial: str = ""
    client_address: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def audit_append_many(events: list[NewEvent]) -> list[tuple[Any, ...]]:
    """Append events in order; call it inside the transaction of the change they record.

    Returns the rows written as (seq, kind, actor, serial, client_address, data, prev_hash, hash).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("audit events must be written inside the transaction of the change they record")
    if not events:
        return []
    # The head row lock serialises appenders on PostgreSQL; SQLite's IMMEDIATE transactions already
    # serialise all writers. Either way two events can never claim the same predecessor.
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:  # made by a migration; only a flushed test database lacks it
        AuditChainHead.objects.get_or_create(pk=1)
        head = AuditChainHead.objects.select_for_update().get(pk=1)
    created_at = timezone.now()
    seq, prev_hash = head.last_seq, head.last_hash
    key = audit_keys()[0]
    rows: list[tuple[Any, ...]] = []
    for event in events:
        seq += 1
        data = _plain(event.data)
        event_hash = _hash(
            seq, created_at, event.kind, event.actor, event.serial, event.client_address, data, prev_hash, key=key
        )
        rows.append((seq, event.kind, event.actor, event.serial, event.client_address, data, prev_hash, event_hash))
        prev_hash = event_hash
    stamp = db_datetime(created_at)
    # Plain executemany: imports and token runs append one event per device, 100,000 at a time.
    insert_rows(
        AuditEvent,
        ["seq", "created_at", "kind", "actor", "serial", "client_address", "data", "prev_hash", "hash"],
        ((r[0], stamp, r[1], r[2], r[3], r[4], db_json(r[5]), r[6], r[7]) for r in rows),
    )
    AuditChainHead.objects.filter(pk=1).update(last_seq=seq, last_hash=prev_hash)
    return rows


def audit_append(
    *,
    kind: str,
    actor: str,
    serial: str = "",
    client_address: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event; call it inside the transaction of the change it records."""
    audit_append_many([NewEvent(kind=kind, actor=actor, serial=serial, client_address=client_address, data=data or {})])


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    message: str

    def __str__(self) -> str:
        return f"audit event #{self.seq}: {self.message}"


def _events() -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("seq").iterator(chunk_size=2000)


def audit_verify(*, anchors: list[Anchor] | None = None) -> list[AuditProblem]:
    """Walk the chain from the first event; report every break (edited, inserted or deleted rows).

    With `anchors` (heads copied out of the database by `anchor_audit`), also report every anchored
    event that is missing or differs: a truncated tail, or a database restored from an older backup.
    """
    problems: list[AuditProblem] = []
    expected_seq = 1
    prev_hash = GENESIS_HASH
    keys = audit_keys()
    for event in _events():
        if event.seq != expected_seq:
            problems.append(AuditProblem(event.seq, f"expected #{expected_seq} here: rows deleted or inserted"))
        if event.prev_hash != prev_hash:
            problems.append(AuditProblem(event.seq, "does not chain to the event before it"))
        if not _event_hash_matches(event, keys):
            problems.append(AuditProblem(event.seq, "content does not match its hash: the row was edited"))
        prev_hash = event.hash
        expected_seq = event.seq + 1
    head = AuditChainHead.objects.filter(pk=1).first() or AuditChainHead(last_seq=0, last_hash=GENESIS_HASH)
    if head.last_seq != expected_seq - 1 or head.last_hash != prev_hash:
        problems.append(AuditProblem(head.last_seq, "the newest events are missing: rows deleted at the end"))
    for anchor in anchors or []:
        problems.extend(_anchor_problems(anchor))
    return problems


@dataclass(frozen=True)
class Anchor:
    """The chain's head at one moment, kept outside the database: event `seq` had hash `head`."""

    seq: int
    head: str
    time: str


def audit_head() -> Anchor:
    head = AuditChainHead.objects.filter(pk=1).first() or AuditChainHead(last_seq=0, last_hash=GENESIS_HASH)
    return Anchor(seq=head.last_seq, head=head.last_hash, time=timezone.now().isoformat())


def _anchor_problems(anchor: Anchor) -> list[AuditProblem]:
    if anchor.seq == 0:
        return []
    event = AuditEvent.objects.filter(seq=anchor.seq).only("hash").first()
    if event is None:
        return [
            AuditProblem(
                anchor.seq,
                f"anchored at {anchor.time} but missing: the log was truncated or restored from an older copy",
            )
        ]
    if not hmac.compare_digest(event.hash, anchor.head):
        return [AuditProblem(anchor.seq, f"differs from its anchor of {anchor.time}: the chain was rewritten")]
    return []
