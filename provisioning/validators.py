"""Input rules shared by the API, the CSV import, the admin and the commands.

Every value that reaches AWS is checked here, where it enters the portal, against AWS's own published
rules: the emulator accepts anything, AWS refuses the call, and a device would get 503 for ever.
"""

from __future__ import annotations

import re

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


def attributes_check(attributes: dict[str, str]) -> dict[str, str]:
    """A device's own thing attributes, as AWS IoT's CreateThing accepts them beside serial and product."""
    if len(attributes) > DEVICE_ATTRIBUTES_MAX:
        raise InputInvalid(
            f"at most {DEVICE_ATTRIBUTES_MAX} attribute(s): a thing without a thing type carries "
            f"{THING_ATTRIBUTES_WITHOUT_TYPE}, and serial and product are two of them"
        )
    for name, value in attributes.items():
        if name in RESERVED_ATTRIBUTES:
            raise InputInvalid(f"attribute {name!r} is set by the portal")
        if not ATTRIBUTE_NAME_RE.match(name):
            raise InputInvalid(
                f"attribute name {name[:70]!r} must be 1-128 of letters, digits and _ . , @ / : # - (AWS IoT's rule)"
            )
        if not ATTRIBUTE_VALUE_RE.match(value):
            raise InputInvalid(
                f"value of attribute {name!r} must be at most 800 of letters, digits and _ . , @ / : # = [ ] - "
                "(AWS IoT's rule)"
            )
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
