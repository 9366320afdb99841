"""Compare the database, the DynamoDB table and AWS IoT; report every difference and repair it.

The database is the source of truth. Repairs follow it: the table is rewritten from it, certificates
AWS holds that it does not know are revoked (ACTIVE) or deleted (never activated) — never adopted —,
and what it says is attached and active is attached and activated again. The one thing the database
cannot win is a certificate AWS has revoked or lost: that device is recorded as revoked, to be reset.
Every repair writes an audit event.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import aws
from .audit import audit_append
from .mirror import device_association_item
from .models import AuditKind, Certificate, CertificateStatus, Device, DeviceAction, DeviceState
from .services import claim_is_stale, claim_recover, device_transition
from .services.rotation import rotation_claim_recover, rotation_complete, rotation_rollback
from .services.vending import thing_attributes

logger = logging.getLogger(__name__)


@dataclass
class Difference:
    serial: str
    kind: str
    detail: str
    repair: Callable[[], None] = field(repr=False, compare=False, default=lambda: None)

    def __str__(self) -> str:
        return f"{self.serial}: {self.kind}: {self.detail}"


@dataclass
class RepairResult:
    difference: Difference
    error: str | None = None


def _comparable(item: dict) -> dict:
    return {key: value for key, value in item.items() if value is not None}


# --- DynamoDB -----------------------------------------------------------------------------------


def _table_differences(devices: dict[str, Device]) -> list[Difference]:
    table = settings.CVM_DYNAMODB_TABLE
    items = {item["productId"]: item for item in aws.table_scan(table_name=table)}
    differences = []
    for serial, device in devices.items():
        expected = _comparable(device_association_item(device))

        def rewrite(expected: dict = expected) -> None:
            aws.association_replace(table_name=table, item=expected)

        held = items.get(serial)
        if held is None:
            differences.append(Difference(serial, "table_missing", "no item in the DynamoDB table", rewrite))
        elif held != expected:
            changed = sorted(key for key in expected.keys() | held.keys() if expected.get(key) != held.get(key))
            detail = (
                f"item differs in {', '.join(changed)} (table version {held.get('version')}, database {device.version})"
            )
            differences.append(Difference(serial, "table_stale", detail, rewrite))
    for serial in items.keys() - devices.keys():
        differences.append(
            Difference(
                serial,
                "table_unknown",
                "item for a serial the database does not know",
                lambda serial=serial: aws.association_delete(table_name=table, serial=serial),
            )
        )
    return differences


# --- AWS IoT ------------------------------------------------------------------------------------


def _in_aws(
    action: Callable[..., None], info: aws.CertificateInfo, thing_name: str, policy_name: str
) -> Callable[[], None]:
    """A repair that revokes or discards one certificate the thing holds."""
    return functools.partial(
        action,
        certificate_id=info.certificate_id,
        certificate_arn=info.arn,
        thing_name=thing_name,
        policy_name=policy_name,
    )


def _record_lost_certificate(device: Device, certificate: Certificate, why: str) -> Callable[[], None]:
    def repair() -> None:
        # Whatever AWS still holds of it (thing and policy attachments) goes, as with any revoke.
        aws.certificate_revoke(
            certificate_id=certificate.certificate_id,
            certificate_arn=certificate.arn,
            thing_name=certificate.thing_name,
            policy_name=certificate.attached_policy,
        )
        with transaction.atomic():
            revoked = device_transition(
                device.pk,
                action=DeviceAction.REVOKE,
                where={"current_certificate": certificate},
                kind=AuditKind.DEVICE_REVOKED,
                actor="reconcile",
                data={"reason": why, "certificate_id": certificate.certificate_id},
            )
            if revoked is not None:
                Certificate.objects.filter(pk=certificate.pk).update(
                    status=CertificateStatus.REVOKED,
                    revoked_at=timezone.now(),
                    revoked_by="reconcile",
                    revoked_reason=why,
                )

    return repair


def _check_repaired(done: bool) -> None:
    if not done:
        raise RuntimeError("the device changed meanwhile; run reconcile again")


def _usable_certificate_differences(
    device: Device,
    certificate: Certificate,
    info: aws.CertificateInfo,
    on_thing: dict[str, aws.CertificateInfo],
    targets: PolicyTargets,
) -> list[Difference]:
    """What keeps a certificate the device should be able to use (its current one, or the one pending in a
    rotation) from working: not ACTIVE, not attached to the thing, or without its product's policy."""
    serial, thing_name, policy = device.serial, device.thing_name, device.product.policy_name
    role = "active" if certificate.status == CertificateStatus.ACTIVE else "pending"
    differences = []
    if info.status != "ACTIVE":
        differences.append(
            Difference(
                serial,
                f"{role}_certificate_inactive",
                f"{certificate.certificate_id} is {info.status} in AWS IoT; it will be activated",
                lambda: aws.certificate_activate(certificate_id=certificate.certificate_id),
            )
        )
    if certificate.certificate_id not in on_thing:
        differences.append(
            Difference(
                serial,
                "certificate_detached",
                f"{certificate.certificate_id} is not attached to thing {thing_name}",
                lambda: aws.thing_attach(thing_name=thing_name, certificate_arn=certificate.arn),
            )
        )
    if certificate.arn not in targets.of(policy):
        recorded = certificate.attached_policy
        differs = recorded != policy and certificate.arn in targets.of(recorded)

        def attach_product_policy() -> None:
            aws.policy_attach(policy_name=policy, certificate_arn=certificate.arn)
            if differs:
                aws.policy_detach(policy_name=recorded, certificate_arn=certificate.arn)
            Certificate.objects.filter(pk=certificate.pk).update(policy_name=policy)

        differences.append(
            Difference(
                serial,
                "policy_differs" if differs else "policy_detached",
                f"{certificate.certificate_id} has policy {recorded}, its product {device.product.name} names {policy}"
                if differs
                else f"policy {policy} is not attached to {certificate.certificate_id}",
                attach_product_policy,
            )
        )
    return differences


def _thing_differences(device: Device) -> list[Difference]:
    """Where the thing differs from what its product and the device's attributes ask (SPEC §5.1).

    Groups the product names must hold the thing; groups someone else added it to are left alone.
    """
    serial, thing_name, product = device.serial, device.thing_name, device.product
    expected = thing_attributes(device)
    thing = aws.thing_describe(thing_name=thing_name)
    if thing is None:
        return [
            Difference(
                serial,
                "thing_missing",
                f"thing {thing_name} does not exist in AWS IoT; it will be created",
                lambda: aws.thing_ensure(thing_name=thing_name, attributes=expected, thing_type=product.thing_type),
            )
        ]
    differences = []

    def reshape() -> None:
        aws.thing_update(thing_name=thing_name, attributes=expected, thing_type=product.thing_type)

    if thing.thing_type != product.thing_type:
        differences.append(
            Difference(
                serial,
                "thing_type_differs",
                f"thing {thing_name} has type {thing.thing_type or '-'}, its product {product.name} names "
                f"{product.thing_type or '-'}",
                reshape,
            )
        )
    if thing.attributes != expected:
        changed = sorted(
            k for k in expected.keys() | thing.attributes.keys() if expected.get(k) != thing.attributes.get(k)
        )
        differences.append(
            Difference(
                serial, "thing_attributes_differ", f"thing {thing_name} differs in {', '.join(changed)}", reshape
            )
        )
    missing = [group for group in product.thing_groups if group not in thing.groups]
    if missing:

        def join() -> None:
            for group in missing:
                aws.thing_group_add(thing_name=thing_name, group_name=group)

        differences.append(
            Difference(serial, "thing_groups_differ", f"thing {thing_name} is not in {', '.join(missing)}", join)
        )
    return differences


@dataclass
class PolicyTargets:
    """The certificates each policy is attached to, listed once per policy per reconcile run."""

    lists: dict[str, set[str]] = field(default_factory=dict)

    def of(self, policy: str) -> set[str]:
        if policy not in self.lists:
            self.lists[policy] = aws.policy_targets(policy_name=policy)
        return self.lists[policy]


def _device_iot_differences(device: Device, targets: PolicyTargets) -> list[Difference]:
    serial = device.serial
    thing_name = device.thing_name
    known = {c.certificate_id: c for c in Certificate.objects.filter(device=device)}
    current = device.current_certificate if device.state == DeviceState.ACTIVE else None
    on_thing = {info.certificate_id: info for info in aws.thing_certificates(thing_name=thing_name)}
    differences = []

    for certificate_id, info in on_thing.items():
        recorded = known.get(certificate_id)
        if recorded is None:
            if info.status == "ACTIVE":
                differences.append(
                    Difference(
                        serial,
                        "orphan_certificate",
                        f"{certificate_id} is ACTIVE in AWS IoT but not recorded; it will be revoked, not adopted",
                        _in_aws(aws.certificate_revoke, info, thing_name, device.product.policy_name),
                    )
                )
            elif info.status != "REVOKED":
                differences.append(
                    Difference(
                        serial,
                        "leftover_certificate",
                        f"{certificate_id} ({info.status}) from an issuance that did not finish",
                        _in_aws(aws.certificate_discard, info, thing_name, device.product.policy_name),
                    )
                )
        elif recorded.status == CertificateStatus.REVOKED and info.status != "REVOKED":
            differences.append(
                Difference(
                    serial,
                    "revoked_certificate_usable",
                    f"{certificate_id} is revoked in the database but {info.status} in AWS IoT",
                    _in_aws(aws.certificate_revoke, info, thing_name, recorded.attached_policy),
                )
            )

    pending = device.pending_certificate if current is not None else None
    infos = {
        certificate.certificate_id: on_thing.get(certificate.certificate_id)
        or aws.certificate_describe(certificate_id=certificate.certificate_id)
        for certificate in (current, pending)
        if certificate is not None
    }
    usable = {cid for cid, info in infos.items() if info is not None and info.status != "REVOKED"}

    if current is not None and current.certificate_id not in usable and pending and pending.certificate_id in usable:
        # A confirmation stopped between revoking the old certificate in AWS and recording it.
        differences.append(
            Difference(
                serial,
                "rotation_half_confirmed",
                f"{current.certificate_id} is revoked in AWS IoT while its rotation to {pending.certificate_id} "
                "is pending; the rotation will be completed",
                lambda: _check_repaired(rotation_complete(device=device, actor="reconcile")),
            )
        )
        return differences
    if pending is not None and pending.certificate_id not in usable:
        differences.append(
            Difference(
                serial,
                "pending_certificate_lost",
                f"{pending.certificate_id}, pending in a rotation, is missing or REVOKED in AWS IoT; the rotation "
                "will be rolled back",
                lambda: _check_repaired(
                    rotation_rollback(device=device, actor="reconcile", reason="reconcile: lost in AWS IoT")
                ),
            )
        )
        pending = None
    if current is not None and current.certificate_id not in usable:
        info = infos[current.certificate_id]
        why = "reconcile: certificate " + ("missing from" if info is None else "REVOKED in") + " AWS IoT"
        differences.append(
            Difference(
                serial,
                "active_certificate_lost",
                f"{current.certificate_id} is active in the database "
                f"but {'missing' if info is None else 'REVOKED'} in AWS IoT; the device will be recorded "
                "as revoked and needs a reset",
                _record_lost_certificate(device, current, why),
            )
        )
        current = None
    for certificate in (c for c in (current, pending) if c is not None):
        differences.extend(
            _usable_certificate_differences(device, certificate, infos[certificate.certificate_id], on_thing, targets)
        )
    for certificate in known.values():
        policy = certificate.attached_policy
        if certificate.status == CertificateStatus.REVOKED and certificate.arn in targets.of(policy):
            differences.append(
                Difference(
                    serial,
                    "revoked_certificate_has_policy",
                    f"policy {policy} is still attached to revoked {certificate.certificate_id}",
                    lambda arn=certificate.arn, policy=policy: aws.policy_detach(
                        policy_name=policy, certificate_arn=arn
                    ),
                )
            )
    if current is not None or pending is not None:
        differences.extend(_thing_differences(device))
    return differences


def _claim_differences(device: Device) -> list[Difference]:
    if device.state == DeviceState.ACTIVE and device.claim_id is not None and claim_is_stale(device, timezone.now()):
        return [
            Difference(
                device.serial,
                "stale_rotation_claim",
                "a rotation step died while talking to AWS IoT; what it created will be removed",
                lambda: _check_repaired(rotation_claim_recover(device=device, actor="reconcile")),
            )
        ]
    if not device.allows(DeviceAction.RECOVER) or not claim_is_stale(device, timezone.now()):
        return []
    return [
        Difference(
            device.serial,
            "stale_claim",
            f"issuing since {device.claimed_at:%Y-%m-%d %H:%M:%S}; the issuance died and will be rolled back"
            if device.claimed_at
            else "issuing with no claim time; the issuance died and will be rolled back",
            lambda: claim_recover(device=device, actor="reconcile"),
        )
    ]


def reconcile_find() -> list[Difference]:
    """Every difference between the database, the DynamoDB table and AWS IoT, one per finding."""
    devices = {
        d.serial: d
        for d in Device.objects.select_related("product", "current_certificate", "pending_certificate").order_by(
            "serial"
        )
    }
    differences = _table_differences(devices)
    targets = PolicyTargets()
    for device in devices.values():
        stale_claim = _claim_differences(device)
        differences.extend(stale_claim)
        # A device that never asked for a certificate has nothing in AWS IoT to compare; one whose
        # claim is being rolled back is compared after the roll-back, on the next run.
        if not stale_claim and (device.state != DeviceState.REGISTERED or device.aws_cleanup_pending):
            differences.extend(_device_iot_differences(device, targets))
    return differences


def reconcile_fix(differences: list[Difference]) -> list[RepairResult]:
    """Repair each difference on its own; one failing does not stop the others."""
    results = []
    for difference in differences:
        try:
            difference.repair()
        except aws.AwsError as exc:
            results.append(RepairResult(difference, f"AWS: {exc.operation}: {exc.code}"))
            continue
        with transaction.atomic():
            audit_append(
                kind=AuditKind.RECONCILE_REPAIR,
                actor="reconcile",
                serial=difference.serial,
                data={"difference": difference.kind, "detail": difference.detail},
            )
        results.append(RepairResult(difference))
    # A device flagged for clean-up whose leftovers were all removed needs no clean-up at its next vend.
    failed = {result.difference.serial for result in results if result.error}
    Device.objects.filter(aws_cleanup_pending=True).exclude(serial__in=failed).update(aws_cleanup_pending=False)
    return results
