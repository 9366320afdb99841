"""The tamper-evident audit log: writers append, one sequencer chains, anyone verifies.

Each event's `hash` is an HMAC-SHA256, under `CVM_AUDIT_HMAC_KEY`, of its content, its place in the
chain (`seq`) and its predecessor's hash. The key lives outside the database, so someone who can write
the database but does not hold the key can neither edit an event and recompute the chain after it nor
forge a new tail. Deleting the newest events and rewinding the head is caught by anchors: `anchor_audit`
copies the head to an append-only sink outside the database, and `verify_audit --anchors` checks every
anchored event is still there.

Writers never wait for each other here. A change inserts its events unchained (`seq` NULL) in its own
transaction, taking no lock but its row's; the sequencer (`audit_chain_pending`, run by the worker every
AUDIT_CHAIN_EVERY_SECONDS) is the only one that takes the chain head's lock, and gives the events
committed since its last round their `seq`, `prev_hash` and `hash`, in the order it finds them. One
global chain written by every vend would otherwise serialise the whole fleet on one row lock.

The invariant kept: every committed event is chained within seconds of its commit, and `verify_audit`
reports any event left unchained longer than AUDIT_CHAIN_LAG_LIMIT. What it gives up: an event is
protected by the chain only from the moment it is chained, so someone with write access to the database
could alter or delete an event in the second between its commit and its chaining (on PostgreSQL the
trigger refuses even that to the portal's own role).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from .bulk import db_datetime, insert_rows
from .models import AuditChainHead, AuditEvent
from .prepared import table as prepared_table

GENESIS_HASH = "0" * 64

logger = logging.getLogger(__name__)


def audit_keys() -> list[bytes]:
    """The current key first, then the fallbacks still accepted while verifying (key rotation)."""
    return [key.encode() for key in [settings.CVM_AUDIT_HMAC_KEY, *settings.CVM_AUDIT_HMAC_KEY_FALLBACKS]]


# The one encoder of every body (json.dumps with these arguments would build a new one on each call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


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
    return _CANONICAL.encode(
        [seq, created_at.astimezone(UTC).isoformat(), kind, actor, serial, client_address, data, prev_hash]
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


def _content_mac(
    created_at: datetime, kind: str, actor: str, serial: str, client_address: str | None, data: Any, *, key: bytes
) -> str:
    """The writer's HMAC of an event's content, before it has a place in the chain (no seq, no predecessor)."""
    body = _body(None, created_at, kind, actor, serial, client_address, data, "")
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _content_mac_signer(
    created_at: datetime, kind: str, actor: str, client_address: str | None, data: Any, *, key: bytes
) -> Callable[[str], str]:
    """`_content_mac` of events that differ only in their serial, as a function of the serial.

    An import or a token run signs 100,000 events alike but for the serial. The body is a JSON list, so
    it is the encoding of the items before the serial, then the serial's, then that of the items after
    it: those two parts are encoded once, the HMAC is keyed and fed the first once, and each serial
    costs a copy of that HMAC and its own few bytes (tests/test_audit.py checks both agree).
    """
    head = _CANONICAL.encode([None, created_at.astimezone(UTC).isoformat(), kind, actor])[:-1] + ","
    tail = ("," + _CANONICAL.encode([client_address, data, ""])[1:]).encode()
    keyed = hmac.new(key, head.encode(), hashlib.sha256)

    def mac(serial: str) -> str:
        each = keyed.copy()
        each.update(encode_basestring_ascii(serial).encode() + tail)
        return each.hexdigest()

    return mac


def _event_mac_matches(event: AuditEvent, keys: list[bytes]) -> bool:
    """Whether an unchained event still carries the content its writer made its MAC of."""
    if not event.mac:
        return False  # every event written since the sequencer exists has one; the rest were chained then
    fields = (event.created_at, event.kind, event.actor, event.serial, event.client_address, event.data)
    return any(hmac.compare_digest(_content_mac(*fields, key=key), event.mac) for key in keys)


def _address(client_address: str | None) -> str | None:
    """The address as the database will give it back (PostgreSQL's inet prints the canonical form)."""
    if not client_address:
        return client_address
    try:
        return str(ipaddress.ip_address(client_address))
    except ValueError:
        return client_address


class AuditChainBroken(ValueError):
    """The chain's head does not match its newest event: the sequencer will not build on it."""


def legacy_sha256(event: AuditEvent) -> str:
    """The plain SHA-256 chain the log used before it was keyed (the keying migration checks it)."""
    return hashlib.sha256(_body(*_event_fields(event))).hexdigest()


def _data_json(data: dict[str, Any]) -> str:
    """`data` as stored: JSON, with anything JSON has no type for (a time, a UUID) as its text."""
    return json.dumps(data, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class NewEvent:
    kind: str
    actor: str
    serial: str = ""
    client_address: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


AUDIT_CHAIN_EVERY_SECONDS = 0.25
AUDIT_CHAIN_LAG_LIMIT = timedelta(seconds=60)
AUDIT_CHAIN_BATCH = 5000


def audit_append_many(events: list[NewEvent]) -> int:
    """Insert events, unchained, in order; call it inside the transaction of the change they record.

    Takes no lock beyond the insert: the sequencer (`audit_chain_pending`) chains them after the
    transaction commits. Returns how many were written.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("audit events must be written inside the transaction of the change they record")
    if not events:
        return 0
    now = timezone.now()
    stamp = db_datetime(now)
    key = audit_keys()[0]
    # Imports and token runs append one event per device, 100,000 at a time, alike but for the serial
    # (one kind, one actor, one shared `data` dict): each such group's data is encoded once (as stored,
    # and as the database will give it back) and its MACs share one signer.
    signers: dict[tuple[str, str, str | None, int], tuple[Callable[[str], str], str]] = {}

    def row(event: NewEvent) -> tuple[Any, ...]:
        address = _address(event.client_address)
        group = (event.kind, event.actor, address, id(event.data))  # the events hold their dicts: ids are stable
        found = signers.get(group)
        if found is None:
            text = _data_json(event.data)
            signer = _content_mac_signer(now, event.kind, event.actor, address, json.loads(text), key=key)
            found = signers[group] = (signer, text)
        mac, text = found
        return (stamp, event.kind, event.actor, event.serial, address, text, "", "", mac(event.serial))

    return insert_rows(
        AuditEvent,
        ["created_at", "kind", "actor", "serial", "client_address", "data", "prev_hash", "hash", "mac"],
        (row(event) for event in events),
    )


def audit_chain_pending(*, batch: int = AUDIT_CHAIN_BATCH) -> int:
    """Chain every committed, unchained event (oldest insert first); returns how many were chained.

    Each round is one short transaction holding the chain head's row lock: it reads up to `batch`
    unchained events, computes their keyed hashes one after another, and writes `seq`, `prev_hash` and
    `hash` with a conditional UPDATE (`seq IS NULL`), so two sequencers running at once can never chain
    an event twice or fork the chain. The event's content is hashed as the database gives it back, which
    is what `audit_verify` will read.

    The sequencer holds the key, so it must not sign whatever it finds: an event whose writer's MAC
    (`mac`) does not match its content was forged or altered in the database and is left unchained (and
    logged; `audit_verify` reports it). Raises AuditChainBroken, chaining nothing, when the head does not
    match the newest chained event (rewound or edited): building on it would launder the break.
    """
    total = 0
    keys = audit_keys()
    refused: list[int] = []
    while True:
        # A look without the lock first: an idle sequencer must not take SQLite's write lock every round.
        if not AuditEvent.objects.filter(seq__isnull=True).exclude(id__in=refused).exists():
            return total
        with transaction.atomic():
            head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
            if head is None:  # made by a migration; only a flushed test database lacks it
                AuditChainHead.objects.get_or_create(pk=1)
                head = AuditChainHead.objects.select_for_update().get(pk=1)
            newest = AuditEvent.objects.filter(seq__isnull=False).order_by("-seq").values_list("seq", "hash").first()
            if (head.last_seq, head.last_hash) != (newest or (0, GENESIS_HASH)):
                raise AuditChainBroken(
                    f"the audit chain's head (#{head.last_seq}) does not match its newest event "
                    f"(#{newest[0] if newest else 0}); nothing is chained until verify_audit has been looked at"
                )
            pending = list(
                AuditEvent.objects.filter(seq__isnull=True)
                .exclude(id__in=refused)
                .order_by("id")
                .only("id", "created_at", "kind", "actor", "serial", "client_address", "data", "mac")[:batch]
            )
            if not pending:
                return total
            seq, prev_hash = head.last_seq, head.last_hash
            params = []
            for event in pending:
                if not _event_mac_matches(event, keys):
                    refused.append(event.id)
                    logger.error("audit event refused by the sequencer: altered or forged", extra={"id": event.id})
                    continue
                seq += 1
                event.seq, event.prev_hash = seq, prev_hash
                event.hash = _hash(*_event_fields(event), key=keys[0])
                params.append((seq, prev_hash, event.hash, event.id))
                prev_hash = event.hash
            if params:
                if _chain_rows(params) != len(params):
                    # Another sequencer chained some of them first: its head lock makes this unreachable,
                    # but if it ever happens the round must not commit a chain with holes.
                    raise RuntimeError("audit events were chained by someone else during this round")
                AuditChainHead.objects.filter(pk=1).update(last_seq=seq, last_hash=prev_hash)
        total += len(params)
        if len(pending) < batch:
            return total


CHAIN_UPDATE_ROWS = 1000


def _chain_rows(params: list[tuple[int, str, str, int]]) -> int:
    """Set (seq, prev_hash, hash) on the unchained events with these ids; returns the rows changed.

    On PostgreSQL one `UPDATE … FROM (VALUES …)` per thousand events: a statement per row would make the
    sequencer several times slower there. SQLite runs in the process, where executemany costs little.
    """
    table = prepared_table(AuditEvent)  # from the model; every value below is a parameter
    changed = 0
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.executemany(
                f"UPDATE {table} SET seq = %s, prev_hash = %s, hash = %s WHERE id = %s AND seq IS NULL",  # noqa: S608
                params,
            )
            return cursor.rowcount
        for start in range(0, len(params), CHAIN_UPDATE_ROWS):
            rows = params[start : start + CHAIN_UPDATE_ROWS]
            values = ", ".join(["(%s::bigint, %s, %s, %s::bigint)"] * len(rows))
            cursor.execute(
                f"UPDATE {table} AS e SET seq = v.seq, prev_hash = v.prev_hash, hash = v.hash "  # noqa: S608
                f"FROM (VALUES {values}) AS v(seq, prev_hash, hash, id) WHERE e.id = v.id AND e.seq IS NULL "
                # The id range (a round's ids ascend) lets the unchained-events index find the rows; without
                # it the planner reads every unchained event for each statement.
                "AND e.id BETWEEN %s AND %s",
                [*(value for row in rows for value in row), rows[0][3], rows[-1][3]],
            )
            changed += cursor.rowcount
    return changed


def audit_unchained() -> tuple[int, datetime | None]:
    """How many committed events wait for the sequencer, and when the oldest of them was written."""
    pending = AuditEvent.objects.filter(seq__isnull=True)
    oldest = pending.order_by("id").values_list("created_at", flat=True).first()
    return pending.count(), oldest


def audit_follow(*, stop: threading.Event) -> None:
    """The worker's sequencer: chain what is pending every AUDIT_CHAIN_EVERY_SECONDS until `stop` is set."""
    while not stop.is_set():
        try:
            audit_chain_pending()
        except AuditChainBroken as exc:
            logger.error("audit chaining stopped", extra={"reason": str(exc)})
        except DatabaseError:
            # The database went away (restart, failover): the next round reconnects.
            logger.warning("audit chaining failed; retrying", exc_info=False)
            close_old_connections()
        stop.wait(AUDIT_CHAIN_EVERY_SECONDS)


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
        return f"audit event #{self.seq}: {self.message}" if self.seq else f"audit log: {self.message}"


def _events() -> Iterator[AuditEvent]:
    return AuditEvent.objects.filter(seq__isnull=False).order_by("seq").iterator(chunk_size=2000)


def audit_verify(*, anchors: list[Anchor] | None = None) -> list[AuditProblem]:
    """Walk the chain from the first event; report every break (edited, inserted or deleted rows), and
    every event that has waited longer than AUDIT_CHAIN_LAG_LIMIT to be chained (the worker is not
    running, or cannot keep up). Events committed since the sequencer's last round are not a problem;
    they are checked once chained. Reads only: an auditor may run it with a read-only database role.

    With `anchors` (heads copied out of the database by `anchor_audit`), also report every anchored
    event that is missing or differs: a truncated tail, or a database restored from an older backup.
    """
    problems: list[AuditProblem] = []
    keys = audit_keys()
    unchained = AuditEvent.objects.filter(seq__isnull=True)
    overdue = unchained.filter(created_at__lt=timezone.now() - AUDIT_CHAIN_LAG_LIMIT)
    if waiting := overdue.count():
        oldest = overdue.order_by("created_at").values_list("created_at", flat=True).first()
        problems.append(
            AuditProblem(
                0,
                f"{waiting} event(s) not chained yet, the oldest written at {oldest.isoformat()}: "  # type: ignore[union-attr]
                "is the worker (sync_dynamodb) running?",
            )
        )
    for event in unchained.order_by("id").iterator(chunk_size=2000):
        if not _event_mac_matches(event, keys):
            problems.append(
                AuditProblem(0, f"unchained event id {event.id} does not match its writer's MAC: altered or forged")
            )
    expected_seq = 1
    prev_hash = GENESIS_HASH
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
    newest = expected_seq - 1
    if head.last_seq > newest:
        problems.append(AuditProblem(head.last_seq, "the newest events are missing: rows deleted at the end"))
    elif head.last_seq < newest:
        problems.append(AuditProblem(head.last_seq, f"the chain head was moved back from #{newest}: it was rewound"))
    elif head.last_hash != prev_hash:
        problems.append(AuditProblem(head.last_seq, "the chain head's hash does not match that event: it was edited"))
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
