"""Products: how a device line is shaped in AWS IoT, like a fleet-provisioning template (SPEC §5.1).

A product names its IoT policy, thing type, static thing groups and `rotate_after_days`. What it names
is created in AWS IoT first (idempotently, through the quota governor), then the product row changes
with its audit event: a name AWS refused never reaches the database. Devices already issued are not
rewritten: `reconcile` reports where their things differ from their product, and `--fix` repairs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from .. import aws
from ..audit import audit_append
from ..models import AuditKind, Device, Product
from ..validators import (
    InputInvalid,
    attribute_count_check,
    policy_name_check,
    product_name_check,
    thing_type_name_check,
)
from .common import ServiceError

UNSET: Any = object()


@dataclass
class ProductReport:
    product: Product
    created: bool
    changes: dict[str, Any] = field(default_factory=dict)
    created_in_aws: list[str] = field(default_factory=list)


def product_aws_ensure(product: Product) -> list[str]:
    """Create what the product names in AWS IoT if it is missing; returns what was created."""
    created = []
    if aws.policy_ensure(policy_name=product.policy_name):
        created.append(f"policy {product.policy_name}")
    if product.thing_type and aws.thing_type_ensure(thing_type=product.thing_type):
        created.append(f"thing type {product.thing_type}")
    for group in product.thing_groups:
        if aws.thing_group_ensure(group_name=group):
            created.append(f"thing group {group}")
    return created


def _checked(check: Any, value: str) -> str:
    try:
        return check(value)
    except InputInvalid as exc:
        raise ServiceError(str(exc)) from None


def product_configure(
    *,
    name: str,
    actor: str,
    description: str = UNSET,
    iot_policy: str = UNSET,
    thing_type: str = UNSET,
    thing_groups: list[str] = UNSET,
    rotate_after_days: int | None = UNSET,
) -> ProductReport:
    """Create or update a product; only the arguments given change. "" clears a policy or a thing type
    (back to the default policy, no type); [] leaves all groups; None clears rotate_after_days.

    Raises ServiceError for a name AWS IoT would refuse, or a change the product's devices cannot take
    (dropping the thing type while devices carry more attributes than a thing without one may have);
    AwsError when AWS IoT refused or could not be reached (then nothing changed).
    """
    _checked(product_name_check, name)
    product = Product.objects.filter(name=name).first()
    created = product is None
    product = product or Product(name=name)
    changes: dict[str, Any] = {}
    wanted: dict[str, Any] = {
        "description": description,
        "iot_policy": iot_policy if iot_policy is UNSET or not iot_policy else _checked(policy_name_check, iot_policy),
        "thing_type": thing_type
        if thing_type is UNSET or not thing_type
        else _checked(thing_type_name_check, thing_type),
        "thing_groups": thing_groups
        if thing_groups is UNSET
        else list(dict.fromkeys(_checked(lambda g: thing_type_name_check(g, "thing group"), g) for g in thing_groups)),
        "rotate_after_days": rotate_after_days,
    }
    if rotate_after_days not in (UNSET, None) and not 1 <= rotate_after_days <= 3650:
        raise ServiceError("rotate_after_days must be 1 to 3650 days")
    if description is not UNSET and len(description) > 255:
        raise ServiceError("the description is longer than 255 characters")
    for attribute, value in wanted.items():
        if value is not UNSET and getattr(product, attribute) != value:
            changes[attribute] = value
            setattr(product, attribute, value)
    if "thing_type" in changes and not product.thing_type and not created:
        most = max(
            (len(a) for a in Device.objects.filter(product=product).values_list("attributes", flat=True)), default=0
        )
        try:
            attribute_count_check(most, has_thing_type=False)
        except InputInvalid as exc:
            raise ServiceError(f"cannot drop the thing type: a device of {name} has {exc}") from None
    created_in_aws = product_aws_ensure(product)
    if created or changes:
        with transaction.atomic():
            product.save()
            audit_append(
                kind=AuditKind.PRODUCT_CONFIGURED,
                actor=actor,
                data={"product": name, "created": created, "changes": changes, "created_in_aws": created_in_aws},
            )
    return ProductReport(product=product, created=created, changes=changes, created_in_aws=created_in_aws)
