"""The device actions staff confirm: issue tokens, revoke, reset (a mixin of DeviceAdmin).

Each is a bulk action on the device list and, for revoke and reset, a control on the device's page; all
go through the one confirmation helper (confirm.py) and a service, and report what was done and what
was skipped and why. Tokens are shown once, on a page that is never cached.
"""

from __future__ import annotations

import base64
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from ..models import Device, DeviceAction, DeviceState
from ..selectors import device_for_action, devices_for_action
from ..services import IssuedToken, ServiceError, devices_reset, devices_revoke, tokens_issue_eligible
from ..tokenfiles import tokens_csv, tokens_file_name
from ..validators import TOKEN_TTL_MAX_DAYS, TOKEN_TTL_MIN_DAYS
from .base import actor_of
from .confirm import ConfirmedAction, confirmed_action, report


class TtlForm(forms.Form):
    ttl_days = forms.IntegerField(
        min_value=TOKEN_TTL_MIN_DAYS,
        max_value=TOKEN_TTL_MAX_DAYS,
        initial=settings.CVM_TOKEN_TTL_DAYS,
        label="Token lifetime (days)",
    )


class RevokeForm(forms.Form):
    reason = forms.CharField(max_length=255, help_text="recorded in the audit log and the certificate history")


class ResetForm(TtlForm):
    reason = forms.CharField(max_length=255, help_text="recorded in the audit log")


def _token_for(device: Device) -> str:
    if device.state == DeviceState.TOKEN_ISSUED:
        return "gets a new token; its unused one stops working"
    return "gets a token"


def _revoke_of(device: Device) -> str:
    certificate = device.current_certificate.certificate_id[:16] + "…" if device.current_certificate else "-"
    pending = " and its pending rotation certificate" if device.pending_certificate_id else ""
    return f"certificate {certificate}{pending} revoked; the device can no longer connect"


def _reset_of(device: Device) -> str:
    if device.allows(DeviceAction.REVOKE):
        return f"{_revoke_of(device)}; then a new token"
    return "gets a new token"


ISSUE_TOKENS = ConfirmedAction(
    title="Issue registration tokens",
    lifecycle_action=DeviceAction.ISSUE_TOKEN,
    will="get a token",
    describe=_token_for,
    note="Each device gets a one-time token, shown once on the next page with a CSV to download. "
    "A device that already has an unused token gets a new one; the old token stops working.",
    form_class=TtlForm,
)
REVOKE = ConfirmedAction(
    title="Revoke certificates",
    lifecycle_action=DeviceAction.REVOKE,
    will="will be revoked",
    describe=_revoke_of,
    note="Each certificate is set REVOKED in AWS IoT and detached from its thing and policy. "
    "The devices can no longer connect. This cannot be undone; a reset issues a new token.",
    form_class=RevokeForm,
    dangerous=True,
)
RESET = ConfirmedAction(
    title="Reset devices",
    lifecycle_action=DeviceAction.RESET,
    will="get a new token",
    describe=_reset_of,
    note="An active certificate is revoked in AWS IoT first; each device then gets a new one-time "
    "token, shown once on the next page.",
    form_class=ResetForm,
    dangerous=True,
)


class DeviceActions:
    """Issue tokens, revoke and reset, as list actions and from a device's page."""

    def action_urls(self) -> list[Any]:
        return [
            path("<int:pk>/revoke/", self.admin_site.admin_view(self.revoke_view), name="provisioning_device_revoke"),
            path("<int:pk>/reset/", self.admin_site.admin_view(self.reset_view), name="provisioning_device_reset"),
        ]

    def has_issue_token_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.issue_token")

    def has_revoke_device_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.revoke_device")

    def has_reset_device_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.reset_device")

    # --- Tokens -------------------------------------------------------------------------------

    @admin.action(description="Issue registration tokens", permissions=["issue_token"])
    def issue_tokens_action(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        def issue(eligible: list[Device], skipped: dict[str, str], data: dict[str, Any]) -> HttpResponse | None:
            try:
                outcome = tokens_issue_eligible(
                    serials=[d.serial for d in eligible], actor=actor_of(request), ttl_days=data["ttl_days"]
                )
            except ServiceError as exc:
                self.message_user(request, f"No tokens were issued: {exc}", messages.ERROR)
                return None
            skipped = {**skipped, **outcome.skipped}
            if not outcome.tokens:
                report(self, request, "issued", [], skipped=skipped, failed={})
                return None
            return self.tokens_response(request, outcome.tokens, devices=eligible, skipped=skipped, failed={})

        devices = devices_for_action(queryset)
        return confirmed_action(self, request, devices, ISSUE_TOKENS, action="issue_tokens_action", run=issue)

    def tokens_response(
        self,
        request: HttpRequest,
        tokens: list[IssuedToken],
        *,
        devices: list[Device],
        skipped: dict[str, str],
        failed: dict[str, str],
    ) -> TemplateResponse:
        """The one and only time these tokens are shown. Nothing of them is kept on the server."""
        csv_text = tokens_csv(tokens)
        issued = {t.serial for t in tokens}
        products = sorted({d.product.name for d in devices if d.serial in issued})
        expiries = sorted({t.expires_at for t in tokens})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Registration tokens — shown once",
            "tokens": tokens,
            "products": products,
            "expires_first": expiries[0],
            "expires_last": expiries[-1],
            "skipped": skipped,
            "failed": failed,
            "csv_text": csv_text,
            "csv_data_uri": "data:text/csv;base64," + base64.b64encode(csv_text.encode()).decode(),
            "file_name": tokens_file_name(count=len(tokens), products=products, issued_at=timezone.now()),
        }
        response = TemplateResponse(request, "admin/provisioning/device/tokens.html", context)
        add_never_cache_headers(response)
        response["Referrer-Policy"] = "no-referrer"
        return response

    # --- Revoke and reset ---------------------------------------------------------------------

    @admin.action(description="Revoke certificates", permissions=["revoke_device"])
    def revoke_action(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        return self._revoke(request, devices_for_action(queryset), action="revoke_action")

    def revoke_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._one_device(request, pk, allowed=self.has_revoke_device_permission(request), act=self._revoke)

    @admin.action(description="Reset (revoke and issue a new token)", permissions=["reset_device"])
    def reset_action(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        return self._reset(request, devices_for_action(queryset), action="reset_action")

    def reset_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._one_device(request, pk, allowed=self.has_reset_device_permission(request), act=self._reset)

    def _one_device(self, request: HttpRequest, pk: int, *, allowed: bool, act: Any) -> HttpResponse:
        """Revoke or reset from the device page: the bulk flow with one device, back to its page after."""
        if not allowed:
            raise PermissionDenied
        device = device_for_action(pk=pk)
        if device is None:
            raise Http404("No such device.")
        response = act(request, [device], action=None)
        return response or HttpResponseRedirect(reverse("admin:provisioning_device_change", args=[pk]))

    def _revoke(self, request: HttpRequest, devices: list[Device], *, action: str | None) -> HttpResponse | None:
        def revoke(eligible: list[Device], skipped: dict[str, str], data: dict[str, Any]) -> None:
            outcome = devices_revoke(
                serials=[d.serial for d in eligible], reason=data["reason"], actor=actor_of(request)
            )
            skipped = {**skipped, **outcome.skipped}
            report(self, request, "revoked", outcome.succeeded, skipped=skipped, failed=outcome.failed)

        return confirmed_action(self, request, devices, REVOKE, action=action, run=revoke)

    def _reset(self, request: HttpRequest, devices: list[Device], *, action: str | None) -> HttpResponse | None:
        def reset(eligible: list[Device], skipped: dict[str, str], data: dict[str, Any]) -> HttpResponse | None:
            outcome = devices_reset(
                serials=[d.serial for d in eligible],
                reason=data["reason"],
                actor=actor_of(request),
                ttl_days=data["ttl_days"],
            )
            skipped = {**skipped, **outcome.skipped}
            if not outcome.tokens:
                report(self, request, "reset", outcome.succeeded, skipped=skipped, failed=outcome.failed)
                return None
            return self.tokens_response(
                request, outcome.tokens, devices=eligible, skipped=skipped, failed=outcome.failed
            )

        return confirmed_action(self, request, devices, RESET, action=action, run=reset)
