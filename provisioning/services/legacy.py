"""Migration from AWS's reference CVM: its DynamoDB table imported as devices, tokens kept as digests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from .. import aws
from ..crypto import certificate_fingerprint, token_digest
from ..models import AuditKind, Certificate, CertificateStatus, Device, DeviceState, KeyOrigin, Product
from ..validators import SERIAL_RE
from .common import record_device_change, thing_name_for
from .tokens import token_ttl


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
    ttl = token_ttl(ttl_days)
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
