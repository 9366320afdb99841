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


@register.filter
def seconds(value: int | None) -> str:
    """A duration as staff read it: 45 s, 12 min, 3 h 5 min, 2 days."""
    if value is None:
        return "-"
    if value < 120:
        return f"{value} s"
    if value < 7200:
        return f"{value // 60} min"
    if value < 172800:
        return f"{value // 3600} h {value % 3600 // 60} min"
    return f"{value // 86400} days"


@register.simple_tag
def active_filters(changelist: Any) -> list[dict[str, str]]:
    """What narrows the list now (each filter in use and the search), each with a link that removes it."""
    active = []
    for spec in changelist.filter_specs:
        used = {key: value for key, value in spec.used_parameters.items() if value not in (None, "", [], [""])}
        if not used:
            continue
        display = getattr(spec, "active_display", None)
        if display is None:
            shown = [str(choice["display"]) for choice in spec.choices(changelist) if choice.get("selected")]
            display = ", ".join(shown) or ", ".join(str(value) for value in used.values())
        remove = changelist.get_query_string(remove=[*spec.expected_parameters(), "p"])
        active.append({"title": str(spec.title), "display": display, "remove": remove})
    if changelist.query:
        active.append(
            {"title": "search", "display": changelist.query, "remove": changelist.get_query_string(remove=["q", "p"])}
        )
    return active
