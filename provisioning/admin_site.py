"""The staff portal's admin site: a dashboard on the index page (admin/dashboard.py) and optional two-factor login."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django_otp.forms import OTPAuthenticationForm


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
            from .admin.dashboard import dashboard_context  # the admin package registers models on import

            context.update(dashboard_context(request.user))
        return super().index(request, context)
