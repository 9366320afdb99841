"""The staff portal's admin site: a dashboard on the index page and optional two-factor login."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django_otp.forms import OTPAuthenticationForm

from .selectors import dashboard_data

CHART_WIDTH, CHART_HEIGHT = 720, 180


def chart(days: list[Any]) -> dict[str, Any]:
    """Coordinates of an SVG bar chart (issued and refused per day), computed here so no script runs."""
    peak = max([1, *(max(d.issued, d.refused) for d in days)])
    slot = CHART_WIDTH / max(1, len(days))
    bar = max(1.0, slot / 2 - 1)
    bars = []
    for i, day in enumerate(days):
        x = i * slot
        for offset, value, kind in ((0, day.issued, "issued"), (bar, day.refused, "refused")):
            height = CHART_HEIGHT * value / peak
            bars.append(
                {
                    "x": round(x + offset, 1),
                    "y": round(CHART_HEIGHT - height, 1),
                    "width": round(bar, 1),
                    "height": round(height, 1),
                    "kind": kind,
                    "title": f"{day.day.isoformat()}: {value} {kind}",
                }
            )
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bars": bars,
        "peak": peak,
        "first": days[0].day if days else None,
        "last": days[-1].day if days else None,
    }


class PortalAdminSite(admin.AdminSite):
    site_header = "CVM portal"
    site_title = "CVM portal"
    index_title = "Fleet provisioning"
    index_template = "admin/cvm_index.html"

    @property
    def login_form(self) -> type | None:  # type: ignore[override]
        # With two-factor login on, the form asks for the TOTP code of a device enrolled in the admin.
        return OTPAuthenticationForm if settings.CVM_ADMIN_2FA else None

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        # With two-factor login on, a password alone opens nothing.
        return not settings.CVM_ADMIN_2FA or request.user.is_verified()

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = dict(extra_context or {})
        if request.user.has_perm("provisioning.view_audit") or request.user.has_perm("provisioning.view_device"):
            dashboard = dashboard_data(now=timezone.now())
            context["dashboard"] = dashboard
            context["chart"] = chart(dashboard.days)
            context["show_history"] = request.user.has_perm("provisioning.view_audit")
        return super().index(request, context)
