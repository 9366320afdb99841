"""Everything that changes state. The API, the admin and the management commands all call these.

Each change to a device is one short transaction that updates the row, appends its audit event and
writes its DynamoDB outbox entry. AWS is never called inside a transaction: a vend claims the device
(`token_issued` -> `issuing`) with a conditional UPDATE, commits, talks to AWS, then records the outcome
in a second transaction that only succeeds while the claim is still its own.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from . import aws
from .audit import NewEvent, audit_append, audit_append_many
from .bulk import chunks, db_datetime, db_json, insert_rows
from .crypto import (
    ValidatedCsr,
    amazon_root_ca_pem,
    certificate_fingerprint,
    token_digest,
    token_generate,
    token_matches,
)
from .models import (
    AuditKind,
    Certificate,
    CertificateStatus,
    Device,
    DeviceState,
    DynamoOutbox,
    KeyOrigin,
    Product,
)
from .selectors import (
    association_item,
    association_items,
    device_association_item,
    device_get,
    refusals_in_window,
)
from .validators import SERIAL_RE

logger = logging.getLogger(__name__)

DEFAULT_PRODUCT = "default"
SYSTEM_ACTOR = "system"
DEVICE_ACTOR = "device"
FAILURE_WINDOW = timedelta(hours=1)
BUSY_RETRY_AFTER = 2


class ServiceError(Exception):
    """A request a person made that cannot be carried out; the message is safe to show them."""


class VendRefused(Exception):
    """Unknown serial, wrong, used or expired token, revoked device: the device is told nothing more."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VendRetryLater(Exception):
    """The request may succeed later; `status` is 409, 429 or 503 and `retry_after` is in seconds."""

    def __init__(self, status: int, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = max(1, retry_after)
        self.detail = detail


@dataclass(frozen=True)
class IssuedToken:
    serial: str
    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True)
class VendResult:
    serial: str
    thing_name: str
    certificate_id: str
    certificate_arn: str
    certificate_pem: str
    private_key_pem: str | None = field(repr=False)
    iot_endpoint: str
    root_ca_pem: str
    public_key_pem: str | None = None


def thing_name_for(serial: str) -> str:
    return f"{settings.CVM_THING_NAME_PREFIX}{serial}"


def record_device_change(
    device_pk: int, *, kind: str, actor: str, client_address: str | None = None, **data: object
) -> Device:
    """Audit a device change and queue its DynamoDB item; call inside the change's transaction."""
    device = Device.objects.select_related("product", "current_certificate").get(pk=device_pk)
    audit_append(kind=kind, actor=actor, serial=device.serial, client_address=client_address, data=data)
    DynamoOutbox.objects.create(serial=device.serial, version=device.version, item=device_association_item(device))
    return device


# --- Import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRow:
    line: int
    serial: str
    product: str


@dataclass(frozen=True)
class ImportReport:
    created: int
    already_known: int
    products_created: int


class ImportInvalid(ServiceError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} invalid row(s); nothing was imported. " + "; ".join(errors[:5]))
        self.errors = errors


MAX_PRODUCT_LENGTH = 64


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
            product = (values[1].strip() if len(values) > 1 else "") or default_product or DEFAULT_PRODUCT
            if not SERIAL_RE.match(serial):
                errors.append(f"line {line}: {serial[:70]!r} is not a valid serial")
            elif serial in seen:
                errors.append(f"line {line}: serial {serial} repeats line {seen[serial]}")
            elif len(product) > MAX_PRODUCT_LENGTH:
                errors.append(f"line {line}: product name longer than {MAX_PRODUCT_LENGTH} characters")
            else:
                seen[serial] = line
                rows.append(ImportRow(line=line, serial=serial, product=product))
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    if errors:
        raise ImportInvalid(errors)
    return rows


def devices_import(*, rows: list[ImportRow], actor: str, note: dict[str, str] | None = None) -> ImportReport:
    """Register every new serial in one transaction; serials already known are left as they are.

    `note` is added to the import's audit event (the admin names its upload there).
    """
    now = timezone.now()
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
             "created_at", "updated_at"],
            ((row.serial, product_ids[row.product], DeviceState.REGISTERED, "", thing_name_for(row.serial), False, 1,
              stamp, stamp) for row in new_rows),
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
        _outbox_insert(
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


def _outbox_insert(items: list[dict], *, now: datetime) -> None:
    """Queue the DynamoDB items of many devices changed in this transaction."""
    stamp = db_datetime(now)
    insert_rows(
        DynamoOutbox,
        ["serial", "version", "item", "created_at", "attempts", "last_error"],
        ((item["productId"], item["version"], db_json(item), stamp, 0, "") for item in items),
    )


def device_register(*, serial: str, product_name: str, actor: str) -> Device:
    """Register one serial (the admin's "add device")."""
    if not SERIAL_RE.match(serial):
        raise ServiceError(f"{serial[:70]!r} is not a valid serial")
    if Device.objects.filter(serial=serial).exists():
        raise ServiceError(f"serial {serial} is already registered")
    devices_import(rows=[ImportRow(line=1, serial=serial, product=product_name or DEFAULT_PRODUCT)], actor=actor)
    return Device.objects.select_related("product").get(serial=serial)


# --- Tokens -------------------------------------------------------------------------------------

TOKEN_ISSUABLE = (DeviceState.REGISTERED, DeviceState.TOKEN_ISSUED)


def tokens_issue(*, serials: list[str], actor: str, ttl_days: int | None = None) -> list[IssuedToken]:
    """Give each device a new token (replacing an unused one); all or none.

    A device that is active or revoked needs `device_reset`, and one being served now cannot change.
    """
    ttl = ttl_days if ttl_days is not None else settings.CVM_TOKEN_TTL_DAYS
    if ttl < 1:
        raise ServiceError("the token lifetime must be at least one day")
    if not serials:
        raise ServiceError("no devices to issue tokens for")
    now = timezone.now()
    expires_at = now + timedelta(days=ttl)
    issued = [IssuedToken(serial=serial, token=token_generate(), expires_at=expires_at) for serial in serials]
    quote = connection.ops.quote_name
    # The state condition makes an update lose cleanly against a vend that claimed the device a moment
    # ago; any row not updated rolls the whole run back, so either every device gets its token or none.
    table = quote(Device._meta.db_table)  # from the model; every value below is a parameter
    sql = (
        f"UPDATE {table} SET state = %s, token_digest = %s, token_expires_at = %s, "  # noqa: S608
        "token_issued_at = %s, updated_at = %s, version = version + 1 WHERE serial = %s AND state IN (%s, %s)"
    )
    stamp, expires = db_datetime(now), db_datetime(expires_at)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.executemany(
                sql,
                [
                    (DeviceState.TOKEN_ISSUED, token_digest(t.token), expires, stamp, stamp, t.serial, *TOKEN_ISSUABLE)
                    for t in issued
                ],
            )
            updated = cursor.rowcount
        if updated != len(issued):
            _raise_why_tokens_failed(serials)
        audit_append_many(
            [
                NewEvent(
                    kind=AuditKind.TOKEN_ISSUED,
                    actor=actor,
                    serial=serial,
                    data={"expires_at": expires_at.isoformat(), "ttl_days": ttl},
                )
                for serial in serials
            ]
        )
        items = association_items(serials)
        _outbox_insert([items[serial] for serial in serials], now=now)
    return issued


def _raise_why_tokens_failed(serials: list[str]) -> None:
    states: dict[str, str] = {}
    for chunk in chunks(serials):
        states.update(Device.objects.filter(serial__in=chunk).values_list("serial", "state"))
    for serial in serials:
        if serial not in states:
            raise ServiceError(f"unknown serial {serial}")
    if len(set(serials)) != len(serials):
        raise ServiceError("a serial is listed twice")
    blocked = next(serial for serial in serials if states[serial] not in TOKEN_ISSUABLE)
    raise ServiceError(f"device {blocked} is {states[blocked]}; use reset to give it a new token")


def registered_serials() -> list[str]:
    return list(Device.objects.filter(state=DeviceState.REGISTERED).order_by("serial").values_list("serial", flat=True))


# --- Vending ------------------------------------------------------------------------------------


def _refuse(serial: str, reason: str, client_address: str | None) -> VendRefused:
    with transaction.atomic():
        audit_append(
            kind=AuditKind.VEND_REFUSED,
            actor=DEVICE_ACTOR,
            serial=serial,
            client_address=client_address,
            data={"reason": reason},
        )
    logger.info("vend refused", extra={"serial": serial, "reason": reason})
    return VendRefused(reason)


def _check_failure_limits(serial: str, client_address: str | None, now: datetime) -> None:
    by_serial, by_address = refusals_in_window(since=now - FAILURE_WINDOW, serial=serial, client_address=client_address)
    for scope, window, limit in (
        ("serial", by_serial, settings.CVM_FAILED_TOKENS_PER_SERIAL),
        ("address", by_address, settings.CVM_FAILED_TOKENS_PER_ADDRESS),
    ):
        if window.count >= limit:
            # The window slides: the limit lifts when the oldest failure in it is an hour old.
            retry_after = math.ceil(((window.oldest or now) + FAILURE_WINDOW - now).total_seconds())
            with transaction.atomic():
                audit_append(
                    kind=AuditKind.VEND_THROTTLED,
                    actor=DEVICE_ACTOR,
                    serial=serial,
                    client_address=client_address,
                    data={"scope": scope, "failures": window.count},
                )
            raise VendRetryLater(429, retry_after, "too many failed attempts; retry later")


def _refusal_reason(device: Device, token: str, now: datetime) -> str | None:
    """Why this token cannot start an issuance for this device, or None when it can."""
    matches = token_matches(token, device.token_digest)
    if device.state == DeviceState.REGISTERED:
        return "no_token_issued"
    if not matches:
        return "token_wrong"
    if device.state == DeviceState.ACTIVE:
        return "token_used"
    if device.state == DeviceState.REVOKED:
        return "device_revoked"
    if device.token_expires_at is None or device.token_expires_at <= now:
        return "token_expired"
    return None


def certificate_vend(*, serial: str, token: str, csr: ValidatedCsr | None, client_address: str | None) -> VendResult:
    """Trade a serial and its one-time token for an ACTIVE certificate attached to the device's thing."""
    now = timezone.now()
    _check_failure_limits(serial, client_address, now)
    device = device_get(serial=serial)
    if device is None:
        token_matches(token, "")  # same work as for a known serial, so timing reveals nothing
        raise _refuse(serial, "unknown_serial", client_address)
    if device.state == DeviceState.ISSUING and claim_is_stale(device, now):
        try:
            claim_recover(device=device)
        except aws.AwsError as exc:
            # The dead issuance cannot be cleaned up while AWS does not answer; nothing else may start.
            raise VendRetryLater(503, exc.retry_after, "AWS IoT is unavailable; retry later") from None
        device = device_get(serial=serial)
        assert device is not None
    reason = _refusal_reason(device, token, now)
    if reason is not None:
        raise _refuse(serial, reason, client_address)
    if device.state == DeviceState.ISSUING:
        _busy(serial, client_address)

    claim_id = uuid.uuid4()
    with transaction.atomic():
        claimed = Device.objects.filter(
            pk=device.pk,
            state=DeviceState.TOKEN_ISSUED,
            token_digest=device.token_digest,
            token_expires_at__gt=now,
        ).update(
            state=DeviceState.ISSUING,
            claim_id=claim_id,
            claimed_at=now,
            last_request_at=now,
            version=F("version") + 1,
        )
        if claimed:
            device = record_device_change(
                device.pk,
                kind=AuditKind.VEND_CLAIMED,
                actor=DEVICE_ACTOR,
                client_address=client_address,
                key_origin=KeyOrigin.CSR if csr else KeyOrigin.AWS,
            )
    if not claimed:
        # Another request got there first: it is either still talking to AWS or has finished.
        current = device_get(serial=serial)
        if current is not None and current.state == DeviceState.ISSUING:
            _busy(serial, client_address)
        raise _refuse(serial, "token_used", client_address)

    return _issue_claimed(device=device, claim_id=claim_id, csr=csr, client_address=client_address)


def _busy(serial: str, client_address: str | None) -> None:
    with transaction.atomic():
        audit_append(kind=AuditKind.VEND_BUSY, actor=DEVICE_ACTOR, serial=serial, client_address=client_address)
    raise VendRetryLater(409, BUSY_RETRY_AFTER, "a request for this device is being served; retry shortly")


def _release_claim(
    device: Device,
    claim_id: uuid.UUID,
    *,
    client_address: str | None,
    cleanup_pending: bool = False,
    **data: object,
) -> None:
    with transaction.atomic():
        released = Device.objects.filter(pk=device.pk, state=DeviceState.ISSUING, claim_id=claim_id).update(
            state=DeviceState.TOKEN_ISSUED,
            claim_id=None,
            claimed_at=None,
            version=F("version") + 1,
            # Never clears a flag set earlier: only a vend that removed the leftovers may do that.
            **({"aws_cleanup_pending": True} if cleanup_pending else {}),
        )
        if released:
            record_device_change(
                device.pk, kind=AuditKind.VEND_FAILED, actor=DEVICE_ACTOR, client_address=client_address, **data
            )


def _issue_claimed(
    *, device: Device, claim_id: uuid.UUID, csr: ValidatedCsr | None, client_address: str | None
) -> VendResult:
    key_origin = KeyOrigin.CSR if csr else KeyOrigin.AWS
    thing_name = thing_name_for(device.serial)
    policy_name = settings.CVM_IOT_POLICY_NAME
    try:
        if device.aws_cleanup_pending:
            _discard_unknown_certificates(device)
        new = aws.certificate_provision(
            thing_name=thing_name,
            attributes={"serial": device.serial, "product": device.product.name},
            csr_pem=csr.pem if csr else None,
            policy_name=policy_name,
        )
    except aws.AwsError as exc:
        _release_claim(
            device,
            claim_id,
            client_address=client_address,
            cleanup_pending=exc.leftover_certificate_id is not None,
            reason="aws_error",
            operation=exc.operation,
            code=exc.code,
            key_origin=key_origin,
        )
        raise VendRetryLater(503, exc.retry_after, "AWS IoT is unavailable; nothing was issued, retry later") from None
    except BaseException:
        _release_claim(device, claim_id, client_address=client_address, reason="internal_error", key_origin=key_origin)
        raise

    try:
        recorded = _record_issued(
            device=device, claim_id=claim_id, new=new, key_origin=key_origin, client_address=client_address
        )
    except BaseException:
        # The database could not record the certificate: withdraw it from AWS so no ACTIVE certificate
        # exists that the source of truth does not know about.
        removed = aws.certificate_discard_quietly(new, thing_name=thing_name, policy_name=policy_name)
        _release_claim(
            device,
            claim_id,
            client_address=client_address,
            cleanup_pending=not removed,
            reason="record_failed",
            key_origin=key_origin,
        )
        raise
    if not recorded:
        # Our claim was recovered as stale while AWS was slow; the certificate must not survive.
        aws.certificate_discard_quietly(new, thing_name=thing_name, policy_name=policy_name)
        raise VendRetryLater(503, BUSY_RETRY_AFTER, "issuance took too long; nothing was issued, retry")
    return VendResult(
        serial=device.serial,
        thing_name=thing_name,
        certificate_id=new.certificate_id,
        certificate_arn=new.arn,
        certificate_pem=new.certificate_pem,
        private_key_pem=new.private_key_pem,
        iot_endpoint=aws.iot_data_endpoint(),
        root_ca_pem=amazon_root_ca_pem(),
        public_key_pem=new.public_key_pem,
    )


def _record_issued(
    *, device: Device, claim_id: uuid.UUID, new: aws.NewCertificate, key_origin: str, client_address: str | None
) -> bool:
    now = timezone.now()
    try:
        return _record_issued_once(
            device=device, claim_id=claim_id, new=new, key_origin=key_origin, client_address=client_address, now=now
        )
    except IntegrityError:
        # Only possible when our claim was recovered and another request issued meanwhile: the device
        # already has its one active certificate, and ours must not survive.
        return False


def _record_issued_once(
    *,
    device: Device,
    claim_id: uuid.UUID,
    new: aws.NewCertificate,
    key_origin: str,
    client_address: str | None,
    now: datetime,
) -> bool:
    with transaction.atomic():
        certificate = Certificate.objects.create(
            device=device,
            certificate_id=new.certificate_id,
            arn=new.arn,
            fingerprint_sha256=certificate_fingerprint(new.certificate_pem),
            key_origin=key_origin,
            thing_name=thing_name_for(device.serial),
            issued_at=now,
            issued_to_address=client_address,
        )
        owned = Device.objects.filter(pk=device.pk, state=DeviceState.ISSUING, claim_id=claim_id).update(
            state=DeviceState.ACTIVE,
            claim_id=None,
            claimed_at=None,
            aws_cleanup_pending=False,
            current_certificate=certificate,
            thing_name=thing_name_for(device.serial),
            version=F("version") + 1,
        )
        if not owned:
            # The claim was recovered meanwhile: roll the certificate row back with the transaction.
            transaction.set_rollback(True)
            return False
        record_device_change(
            device.pk,
            kind=AuditKind.CERTIFICATE_ISSUED,
            actor=DEVICE_ACTOR,
            client_address=client_address,
            certificate_id=new.certificate_id,
            fingerprint_sha256=certificate.fingerprint_sha256,
            key_origin=key_origin,
        )
    return True


# --- Recovery -----------------------------------------------------------------------------------


def claim_is_stale(device: Device, now: datetime) -> bool:
    timeout = timedelta(seconds=settings.CVM_CLAIM_TIMEOUT_SECONDS)
    return device.claimed_at is None or device.claimed_at <= now - timeout


def unknown_thing_certificates(device: Device) -> list[aws.CertificateInfo]:
    """Certificates AWS IoT holds on the device's thing that the database never recorded."""
    known = set(Certificate.objects.filter(device=device).values_list("certificate_id", flat=True))
    return [
        info
        for info in aws.thing_certificates(thing_name=thing_name_for(device.serial))
        if info.certificate_id not in known
    ]


def _discard_unknown_certificates(device: Device) -> list[str]:
    """Deactivate, detach and delete what the thing holds that the database never recorded."""
    discarded = []
    for info in unknown_thing_certificates(device):
        aws.certificate_discard(
            certificate_id=info.certificate_id,
            certificate_arn=info.arn,
            thing_name=thing_name_for(device.serial),
            policy_name=settings.CVM_IOT_POLICY_NAME,
        )
        discarded.append(info.certificate_id)
    return discarded


def claim_recover(*, device: Device, actor: str = SYSTEM_ACTOR) -> bool:
    """Return a device whose issuance crashed to `token_issued`, removing what AWS was left holding.

    Only a stale claim is touched; if its owner is merely slow, its own final step notices the claim is
    gone and withdraws its certificate.
    """
    if device.state != DeviceState.ISSUING or not claim_is_stale(device, timezone.now()):
        return False
    discarded = _discard_unknown_certificates(device)
    with transaction.atomic():
        released = Device.objects.filter(pk=device.pk, state=DeviceState.ISSUING, claim_id=device.claim_id).update(
            state=DeviceState.TOKEN_ISSUED,
            claim_id=None,
            claimed_at=None,
            aws_cleanup_pending=False,
            version=F("version") + 1,
        )
        if released:
            record_device_change(
                device.pk, kind=AuditKind.CLAIM_RECOVERED, actor=actor, discarded_certificates=discarded
            )
    if released:
        logger.warning("stale claim recovered", extra={"serial": device.serial, "discarded": len(discarded)})
    return bool(released)


# --- Staff ------------------------------------------------------------------------------------


def staff_login_record(*, username: str, succeeded: bool, client_address: str | None) -> None:
    """Audit a login to the staff portal; never the password."""
    with transaction.atomic():
        audit_append(
            kind=AuditKind.ADMIN_LOGIN if succeeded else AuditKind.ADMIN_LOGIN_FAILED,
            actor=username[:150],
            client_address=client_address,
        )


# --- Revoke and reset ---------------------------------------------------------------------------


def device_revoke(*, serial: str, reason: str, actor: str) -> Device:
    """Revoke the device's certificate in AWS IoT (REVOKED, detached), then in the database."""
    reason = reason.strip()
    if not reason:
        raise ServiceError("a reason is required to revoke a device")
    device = device_get(serial=serial)
    if device is None:
        raise ServiceError(f"unknown serial {serial}")
    if device.state != DeviceState.ACTIVE or device.current_certificate is None:
        raise ServiceError(f"device {serial} is {device.state}; only an active device can be revoked")
    certificate = device.current_certificate
    # AWS first: once this returns the certificate no longer works, whatever happens next. Repeating it
    # after a failure is harmless, so a retry of the whole revoke is always safe.
    aws.certificate_revoke(
        certificate_id=certificate.certificate_id,
        certificate_arn=certificate.arn,
        thing_name=certificate.thing_name,
        policy_name=settings.CVM_IOT_POLICY_NAME,
    )
    now = timezone.now()
    with transaction.atomic():
        updated = Device.objects.filter(pk=device.pk, state=DeviceState.ACTIVE, current_certificate=certificate).update(
            state=DeviceState.REVOKED, version=F("version") + 1
        )
        if not updated:
            raise ServiceError(f"device {serial} changed while it was being revoked; try again")
        Certificate.objects.filter(pk=certificate.pk).update(
            status=CertificateStatus.REVOKED, revoked_at=now, revoked_by=actor, revoked_reason=reason[:255]
        )
        return record_device_change(
            device.pk,
            kind=AuditKind.DEVICE_REVOKED,
            actor=actor,
            certificate_id=certificate.certificate_id,
            reason=reason[:255],
        )


def device_reset(*, serial: str, actor: str, reason: str = "reset", ttl_days: int | None = None) -> IssuedToken:
    """Revoke the current certificate if there is one, then give the device a new token."""
    device = device_get(serial=serial)
    if device is None:
        raise ServiceError(f"unknown serial {serial}")
    if device.state == DeviceState.ACTIVE:
        device = device_revoke(serial=serial, reason=f"reset: {reason}", actor=actor)
    if device.state != DeviceState.REVOKED:
        raise ServiceError(f"device {serial} is {device.state}; reset applies to active or revoked devices")
    ttl = ttl_days if ttl_days is not None else settings.CVM_TOKEN_TTL_DAYS
    token = token_generate()
    now = timezone.now()
    expires_at = now + timedelta(days=ttl)
    with transaction.atomic():
        updated = Device.objects.filter(pk=device.pk, state=DeviceState.REVOKED).update(
            state=DeviceState.TOKEN_ISSUED,
            token_digest=token_digest(token),
            token_expires_at=expires_at,
            token_issued_at=now,
            current_certificate=None,
            version=F("version") + 1,
        )
        if not updated:
            raise ServiceError(f"device {serial} changed while it was being reset; try again")
        record_device_change(
            device.pk, kind=AuditKind.DEVICE_RESET, actor=actor, reason=reason[:255], expires_at=expires_at
        )
    return IssuedToken(serial=serial, token=token, expires_at=expires_at)


@dataclass(frozen=True)
class BatchOutcome:
    """What a bulk action did to each device: the ones that worked, and why the others did not."""

    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    tokens: list[IssuedToken] = field(default_factory=list)


def devices_revoke(*, serials: list[str], reason: str, actor: str) -> BatchOutcome:
    """Revoke each device on its own: one failing (AWS down, wrong state) leaves the others done."""
    outcome = BatchOutcome()
    for serial in serials:
        try:
            device_revoke(serial=serial, reason=reason, actor=actor)
            outcome.succeeded.append(serial)
        except ServiceError as exc:
            outcome.failed[serial] = str(exc)
        except aws.AwsError as exc:
            outcome.failed[serial] = f"AWS IoT did not answer ({exc.code}); nothing changed, try again"
    return outcome


def devices_reset(*, serials: list[str], reason: str, actor: str, ttl_days: int | None = None) -> BatchOutcome:
    outcome = BatchOutcome()
    for serial in serials:
        try:
            outcome.tokens.append(device_reset(serial=serial, actor=actor, reason=reason, ttl_days=ttl_days))
            outcome.succeeded.append(serial)
        except ServiceError as exc:
            outcome.failed[serial] = str(exc)
        except aws.AwsError as exc:
            outcome.failed[serial] = f"AWS IoT did not answer ({exc.code}); nothing changed, try again"
    return outcome


# --- Migration from the reference CVM -----------------------------------------------------------


@dataclass
class LegacyImportReport:
    """What `legacy_table_import` did (or, in a dry run, would do) with each item of the table."""

    with_token: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    already_known: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _LegacyDevice:
    serial: str
    token: str = field(repr=False)
    certificate: aws.CertificateInfo | None


def legacy_table_import(
    *, table_name: str, product: str, actor: str, ttl_days: int | None = None, dry_run: bool = False
) -> LegacyImportReport:
    """Import the reference CVM's table (`serialNumber`, plaintext `deviceToken`, optional `certinfo`).

    Tokens are kept only as HMAC digests, with the configured lifetime. A device whose item names a
    certificate is recorded `active` with it (or `revoked`, if AWS IoT no longer holds it ACTIVE): its
    token has been spent. Serials already known are left alone, so a second run changes nothing.
    """
    ttl = ttl_days if ttl_days is not None else settings.CVM_TOKEN_TTL_DAYS
    report = LegacyImportReport()
    plan: list[_LegacyDevice] = []
    items = sorted(aws.table_scan(table_name=table_name), key=lambda item: str(item.get("serialNumber", "")))
    known = set(Device.objects.filter(serial__in=[str(i.get("serialNumber", "")) for i in items]).values_list(
        "serial", flat=True
    ))  # fmt: skip
    for item in items:
        serial, token = str(item.get("serialNumber", "")), item.get("deviceToken")
        if not SERIAL_RE.match(serial):
            report.skipped[serial[:70]] = "not a valid serial for this portal"
        elif serial in known:
            report.already_known.append(serial)
        elif not isinstance(token, str) or not token:
            report.skipped[serial] = "no deviceToken"
        elif item.get("certinfo"):
            certificate_id = str(item["certinfo"]).rsplit("/", 1)[-1]
            info = aws.certificate_describe(certificate_id=certificate_id)
            if info is None:
                report.skipped[serial] = f"certificate {certificate_id} is not in AWS IoT"
                continue
            plan.append(_LegacyDevice(serial, token, info))
            (report.active if info.status == "ACTIVE" else report.revoked).append(serial)
        else:
            plan.append(_LegacyDevice(serial, token, None))
            report.with_token.append(serial)
    if dry_run or not plan:
        return report
    now = timezone.now()
    with transaction.atomic():
        product_row, _ = Product.objects.get_or_create(name=product)
        for legacy in plan:
            _legacy_device_create(legacy, product=product_row, actor=actor, now=now, ttl_days=ttl)
    return report


def _legacy_device_create(legacy: _LegacyDevice, *, product: Product, actor: str, now: datetime, ttl_days: int) -> None:
    info = legacy.certificate
    state = DeviceState.TOKEN_ISSUED
    if info is not None:
        state = DeviceState.ACTIVE if info.status == "ACTIVE" else DeviceState.REVOKED
    device = Device.objects.create(
        serial=legacy.serial,
        product=product,
        state=state,
        token_digest=token_digest(legacy.token),
        token_issued_at=now,
        token_expires_at=now + timedelta(days=ttl_days),
        thing_name=thing_name_for(legacy.serial),
        version=1,
    )
    if info is not None:
        certificate = Certificate.objects.create(
            device=device,
            certificate_id=info.certificate_id,
            arn=info.arn,
            fingerprint_sha256=certificate_fingerprint(info.pem) if info.pem else "",
            key_origin=KeyOrigin.AWS,
            status=CertificateStatus.ACTIVE if state == DeviceState.ACTIVE else CertificateStatus.REVOKED,
            # The reference named the thing after the serial, whatever prefix this portal uses.
            thing_name=legacy.serial,
            issued_at=now,
            revoked_at=None if state == DeviceState.ACTIVE else now,
            revoked_by="" if state == DeviceState.ACTIVE else actor,
            revoked_reason="" if state == DeviceState.ACTIVE else f"imported: {info.status} in AWS IoT",
        )
        Device.objects.filter(pk=device.pk).update(current_certificate=certificate)
    record_device_change(
        device.pk,
        kind=AuditKind.LEGACY_IMPORTED,
        actor=actor,
        state=state,
        certificate_id=info.certificate_id if info else None,
    )
