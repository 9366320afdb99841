"""Input rules shared by the API, the CSV import, the admin and the commands.

Every value that reaches AWS is checked here, where it enters the portal, against AWS's own published
rules: the emulator accepts anything, AWS refuses the call, and a device would get 503 for ever.
"""

from __future__ import annotations

import re
from collections.abc import Callable

SERIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:_-]{0,63}$"
SERIAL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9:_-]{0,63}\Z")
SERIAL_MESSAGE = "serial must be 1-64 characters: letters, digits, ':', '_' or '-'"

# Token lifetime, in whole days, for every path that issues a token (command, admin, API, settings).
TOKEN_TTL_MIN_DAYS, TOKEN_TTL_MAX_DAYS = 1, 3650

# AWS IoT API reference, data type ThingAttribute / AttributePayload:
#   attribute name  [a-zA-Z0-9_.,@/:#-]+     at most 128 characters
#   attribute value [a-zA-Z0-9_.,@/:#=\[\]-]*  at most 800 characters
# https://docs.aws.amazon.com/iot/latest/apireference/API_AttributePayload.html
ATTRIBUTE_NAME_RE = re.compile(r"\A[a-zA-Z0-9_.,@/:#-]{1,128}\Z")
ATTRIBUTE_VALUE_RE = re.compile(r"\A[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}\Z")
# AWS IoT Developer Guide, "Thing types": a thing without a thing type may carry three attributes. Every
# thing here carries `serial` and `product`, which leaves one for the device's own.
THING_ATTRIBUTES_WITHOUT_TYPE = 3
RESERVED_ATTRIBUTES = ("serial", "product")
DEVICE_ATTRIBUTES_MAX = THING_ATTRIBUTES_WITHOUT_TYPE - len(RESERVED_ATTRIBUTES)
# AWS IoT API reference, CreateThing / CreateThingType / CreateThingGroup: names [a-zA-Z0-9:_-]+, 1-128.
THING_NAME_RE = re.compile(r"\A[a-zA-Z0-9:_-]{1,128}\Z")
# AWS IoT API reference, CreatePolicy: policyName [\w+=,.@-]+, 1-128.
POLICY_NAME_RE = re.compile(r"\A[\w+=,.@-]{1,128}\Z", re.ASCII)
# DynamoDB API reference, CreateTable: TableName [a-zA-Z0-9_.-]+, 3-255.
TABLE_NAME_RE = re.compile(r"\A[a-zA-Z0-9_.-]{3,255}\Z")

# A product's name becomes the thing attribute `product` of every thing of the product, so it obeys
# the attribute value rule; the database column is 64 characters long.
PRODUCT_NAME_MAX = 64
PRODUCT_NAME_RE = re.compile(r"\A[a-zA-Z0-9_.,@/:#=\[\]-]{1,64}\Z")
PRODUCT_NAME_MESSAGE = (
    "product name must be 1-64 characters: letters, digits and _ . , @ / : # = [ ] - "
    "(it becomes an AWS IoT thing attribute, which allows nothing else)"
)


class InputInvalid(ValueError):
    """A value someone typed breaks one of the rules above; the message says which and is safe to show."""


def serial_check(serial: str) -> str:
    if not isinstance(serial, str) or not SERIAL_RE.match(serial):
        raise InputInvalid(f"{str(serial)[:70]!r}: {SERIAL_MESSAGE}")
    return serial


def product_name_check(name: str) -> str:
    if not PRODUCT_NAME_RE.match(name):
        raise InputInvalid(f"{name[:70]!r}: {PRODUCT_NAME_MESSAGE}")
    return name


# AWS IoT quotas (https://docs.aws.amazon.com/general/latest/gr/iot-core.html#thing-limits, "Things"):
# a thing without a thing type may have at most 3 attributes, one with a thing type at most 50. The
# portal's own two (`serial`, `product`) count toward them.
MAX_ATTRIBUTES_WITHOUT_TYPE, MAX_ATTRIBUTES_WITH_TYPE = 3, 50
PORTAL_ATTRIBUTES = ("serial", "product")


def attribute_check(name: str, value: str) -> None:
    """One thing attribute against AWS IoT's rules; InputInvalid says which part breaks which rule."""
    if name in PORTAL_ATTRIBUTES:
        raise InputInvalid(f"attribute {name!r} is the portal's own; choose another name")
    if not ATTRIBUTE_NAME_RE.match(name):
        raise InputInvalid(
            f"attribute name {name[:70]!r} must be 1-128 of letters, digits and _ . , @ / : # - (AWS IoT's rule)"
        )
    if not ATTRIBUTE_VALUE_RE.match(value):
        raise InputInvalid(
            f"value of {name!r} must be at most 800 of letters, digits and _ . , @ / : # = [ ] - (AWS IoT's rule)"
        )


def attribute_count_check(count: int, *, has_thing_type: bool) -> None:
    """The number of a device's own attributes, given whether its product has a thing type."""
    limit = (MAX_ATTRIBUTES_WITH_TYPE if has_thing_type else MAX_ATTRIBUTES_WITHOUT_TYPE) - len(PORTAL_ATTRIBUTES)
    if count > limit:
        raise InputInvalid(
            f"{count} attributes, but a thing {'with' if has_thing_type else 'without'} a thing type may have "
            f"{limit} beside serial and product (AWS IoT allows {limit + len(PORTAL_ATTRIBUTES)} in all)"
        )


def thing_type_name_check(name: str, what: str = "thing type") -> str:
    if not THING_NAME_RE.match(name):
        raise InputInvalid(f"{what} {name[:70]!r} must be 1-128 of letters, digits, ':', '_' and '-' (AWS IoT's rule)")
    return name


def policy_name_check(name: str) -> str:
    if not POLICY_NAME_RE.match(name):
        raise InputInvalid(f"policy {name[:70]!r} must be 1-128 of letters, digits and + = , . @ _ - (AWS IoT's rule)")
    return name


def validate_thing_type_name(value: str) -> None:
    """The thing type rule as a Django validator (empty: no thing type)."""
    _as_validation_error(thing_type_name_check, value)


def validate_policy_name(value: str) -> None:
    """The policy name rule as a Django validator (empty: the default policy)."""
    _as_validation_error(policy_name_check, value)


def _as_validation_error(check: Callable[[str], object], value: str) -> None:
    from django.core.exceptions import ValidationError

    if not value:
        return
    try:
        check(value)
    except InputInvalid as exc:
        raise ValidationError(str(exc), code="invalid") from None


def attributes_check(attributes: dict[str, str], *, has_thing_type: bool = False) -> dict[str, str]:
    """A device's own thing attributes (name -> value), as AWS IoT's CreateThing accepts them beside serial and
    product: how many (by whether its product has a thing type), and each name and value."""
    attribute_count_check(len(attributes), has_thing_type=has_thing_type)
    for name, value in attributes.items():
        attribute_check(name, value)
    return attributes


def validate_product_name(value: str) -> None:
    """The product rule as a Django validator, for model fields and admin forms."""
    from django.core.exceptions import ValidationError

    if not PRODUCT_NAME_RE.match(value or ""):
        raise ValidationError(PRODUCT_NAME_MESSAGE, code="invalid")


def token_ttl_check(ttl_days: int) -> int:
    """The one lifetime rule: a whole number of days from 1 to 3650 (ten years)."""
    if isinstance(ttl_days, bool) or not isinstance(ttl_days, int):
        raise InputInvalid(f"token lifetime must be a whole number of days, not {ttl_days!r}")
    if not TOKEN_TTL_MIN_DAYS <= ttl_days <= TOKEN_TTL_MAX_DAYS:
        raise InputInvalid(f"token lifetime must be {TOKEN_TTL_MIN_DAYS} to {TOKEN_TTL_MAX_DAYS} days, not {ttl_days}")
    return ttl_days
