"""The admin's home page: the fleet at a glance, and each role's next steps one click away.

State tiles lead to the device list filtered to that state; the chart is drawn on the server as SVG (no
script, no CDN) with labelled axes; the DynamoDB backlog shows how old its oldest change is and warns
when the mirror falls behind. Where Django shows "Recent actions" (its own change log, which the portal
does not write), each role finds its shortcuts instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from ..models import DeviceState
from ..selectors import Dashboard, dashboard_data, device_pks_by_serial, import_batches_recent

CHART_WIDTH, CHART_HEIGHT = 720, 180
CHART_LEFT, CHART_BOTTOM, CHART_TOP = 44, 34, 8
# The mirror drains within seconds while DynamoDB answers; a change older than this means it does not.
OUTBOX_LAG_WARNING = timedelta(seconds=60)


def chart(days: list[Any]) -> dict[str, Any]:
    """Coordinates of an SVG bar chart (issued and refused per day), computed here so no script runs."""
    peak = max([1, *(max(d.issued, d.refused) for d in days)])
    slot = CHART_WIDTH / max(1, len(days))
    bar = max(1.0, slot / 2 - 1)

    def y(value: float) -> float:
        return round(CHART_TOP + CHART_HEIGHT - CHART_HEIGHT * value / peak, 1)

    bars = []
    for i, day in enumerate(days):
        x = CHART_LEFT + i * slot
        for offset, value, kind in ((0, day.issued, "issued"), (bar, day.refused, "refused")):
            bars.append(
                {
                    "x": round(x + offset, 1),
                    "y": y(value),
                    "width": round(bar, 1),
                    "height": round(CHART_HEIGHT * value / peak, 1),
                    "kind": kind,
                    "title": f"{day.day.isoformat()}: {value} {kind}",
                }
            )
    ticks = sorted({0, peak // 2, peak}) if peak > 1 else [0, 1]
    labelled = [0, len(days) // 2, len(days) - 1] if days else []
    return {
        "width": CHART_LEFT + CHART_WIDTH + 8,
        "height": CHART_TOP + CHART_HEIGHT + CHART_BOTTOM,
        "left": CHART_LEFT,
        "right": CHART_LEFT + CHART_WIDTH,
        "base": CHART_TOP + CHART_HEIGHT,
        "bars": bars,
        "peak": peak,
        "y_ticks": [{"value": value, "y": y(value)} for value in ticks],
        "x_ticks": [
            {"label": days[i].day.strftime("%m-%d"), "x": round(CHART_LEFT + i * slot + bar, 1)}
            for i in dict.fromkeys(labelled)
        ],
        "x_title_y": CHART_TOP + CHART_HEIGHT + 30,
        "y_title_x": -(CHART_TOP + CHART_HEIGHT // 2),
        "first": days[0].day if days else None,
        "last": days[-1].day if days else None,
    }


def devices_url(**filters: str) -> str:
    return reverse("admin:provisioning_device_changelist") + (f"?{urlencode(filters)}" if filters else "")


@dataclass(frozen=True)
class Shortcuts:
    title: str
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, url)


def shortcuts(user: Any, dashboard: Dashboard) -> list[Shortcuts]:
    """What each role opens most, in place of Django's "Recent actions"."""
    counts = {state: n for state, _, n in dashboard.devices_by_state}
    sections = []
    if user.has_perm("provisioning.import_devices"):
        factory = Shortcuts("Factory")
        factory.links.append(("Import serials from a CSV", reverse("admin:provisioning_device_import")))
        registered = counts.get(DeviceState.REGISTERED, 0)
        factory.links.append((f"Devices without a token ({registered})", devices_url(state__exact="registered")))
        for batch in import_batches_recent(limit=5):
            if batch.state == "imported":
                label = f"Import {batch.file_name}: {batch.created_count} device(s)"
                factory.links.append((label, devices_url(import_batch=str(batch.pk))))
            else:
                label = f"Import {batch.file_name}: {batch.get_state_display()}"
                factory.links.append((label, reverse("admin:provisioning_device_import_batch", args=[batch.pk])))
        sections.append(factory)
    if user.has_perm("provisioning.revoke_device"):
        security = Shortcuts("Incidents")
        security.links.append(
            (f"Rotations in progress ({dashboard.rotations_pending})", devices_url(rotation="pending"))
        )
        if settings.CVM_ROTATE_AFTER_DAYS:
            security.links.append(("Rotations due", devices_url(rotation="due")))
        security.links.append(
            (f"Being issued now ({counts.get(DeviceState.ISSUING, 0)})", devices_url(state__exact="issuing"))
        )
        security.links.append((f"Revoked ({counts.get(DeviceState.REVOKED, 0)})", devices_url(state__exact="revoked")))
        sections.append(security)
    if user.has_perm("provisioning.view_auditevent"):
        today = timezone.localdate().isoformat()
        events = reverse("admin:provisioning_auditevent_changelist")
        audit = Shortcuts("Audit")
        for label, filters in (
            ("Today's events", {}),
            ("Refused requests today", {"kind__exact": "vend_refused"}),
            ("Revocations today", {"kind__exact": "device_revoked"}),
            ("Staff logins today", {"kind__exact": "admin_login"}),
            ("Failed staff logins today", {"kind__exact": "admin_login_failed"}),
        ):
            query = urlencode({**filters, "created_at__from": today, "created_at__to": today})
            audit.links.append((label, f"{events}?{query}"))
        sections.append(audit)
    return sections


def outbox(dashboard: Dashboard, now: datetime) -> dict[str, Any]:
    age = (now - dashboard.outbox_oldest) if dashboard.outbox_oldest else None
    return {
        "pending": dashboard.outbox_pending,
        "failing": dashboard.outbox_failing,
        "age_seconds": int(age.total_seconds()) if age else None,
        "behind": age is not None and age > OUTBOX_LAG_WARNING,
        "warning_seconds": int(OUTBOX_LAG_WARNING.total_seconds()),
    }


def dashboard_context(user: Any) -> dict[str, Any]:
    now = timezone.now()
    dashboard = dashboard_data(now=now)
    device_pks = device_pks_by_serial({e.serial for e in dashboard.latest_failures if e.serial})
    can_view_devices = user.has_perm("provisioning.view_device")
    failures = [
        (
            event,
            reverse("admin:provisioning_device_change", args=[device_pks[event.serial]])
            if can_view_devices and event.serial in device_pks
            else "",
        )
        for event in dashboard.latest_failures
    ]
    return {
        "dashboard": dashboard,
        "failures": failures,
        "device_total": sum(n for _, _, n in dashboard.devices_by_state),
        "chart": chart(dashboard.days),
        "outbox": outbox(dashboard, now),
        "show_history": user.has_perm("provisioning.view_audit"),
        "can_view_devices": can_view_devices,
        "can_view_outbox": user.has_perm("provisioning.view_dynamooutbox"),
        "shortcuts": shortcuts(user, dashboard),
        "devices_url": devices_url(),
    }
