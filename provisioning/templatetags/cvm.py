"""Template helpers of the staff portal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()


def moment(value: datetime | None) -> str:
    """A time as staff read it in the audit trail: to the second, with its time zone."""
    if value is None:
        return "-"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def moment_short(value: datetime | None) -> str:
    """A time in a list column, to the minute (the record's own page has the seconds)."""
    if value is None:
        return "-"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")


@register.filter(name="moment")
def moment_filter(value: Any) -> str:
    return moment(value) if isinstance(value, datetime) else "-" if value in (None, "") else str(value)
