"""Products and devices: add and import serials, issue tokens, revoke and reset.

Every change goes through a service; the admin collects input, asks the lifecycle table what each
device's state allows, and reports. Nobody edits a device in place, superusers included: the state
machine and the audit chain would not survive it.
"""

from __future__ import annotations

import base64
import uuid
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
from django.utils.html import format_html

from ..models import Certificate, Device, DeviceAction, DeviceState, Product
from ..selectors import (
    device_admin_queryset,
    device_for_action,
    device_search,
    devices_for_action,
    import_batch_devices,
    import_batch_get,
    search_terms,
)
from ..services import (
    IssuedToken,
    ServiceError,
    device_register,
    devices_reset,
    devices_revoke,
    tokens_issue_eligible,
)
from ..templatetags.cvm import moment, moment_short
from ..tokenfiles import tokens_csv, tokens_file_name
from ..validators import SERIAL_RE, TOKEN_TTL_MAX_DAYS, TOKEN_TTL_MIN_DAYS
from .base import BigListAdmin, CsvExportMixin, NoEditing, PortalModelAdmin, actor_of
from .confirm import ConfirmedAction, confirmed_action, report
from .device_page import device_certificates_url, device_events_url, device_sections
from .filters import ImportBatchFilter, RotationFilter
from .imports import ImportViews, batch_tokens_button

# --- Products -----------------------------------------------------------------------------------


@admin.register(Product)
class ProductAdmin(PortalModelAdmin):
    list_display = ["name", "description", "created_at"]
    search_fields = ["name"]
    search_help_text = "Product names containing the words."
    fields = ["name", "description"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The name is copied into every thing's attributes and the DynamoDB table; it does not change.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Devices ------------------------------------------------------------------------------------


class DeviceAddForm(forms.ModelForm):
    class Meta:
        model = Device
        fields = ["serial", "product"]

    def clean_serial(self) -> str:
        serial = self.cleaned_data["serial"].strip()
        if not SERIAL_RE.match(serial):
            raise forms.ValidationError("1-64 characters: letters, digits, ':', '_' or '-', not starting with ':_-'")
        return serial


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


class CertificateInline(NoEditing, admin.TabularInline):
    """The device's certificates, newest first, with who revoked each and why. Only roles that may open
    certificates see it (Django shows an inline to those with its model's view permission)."""

    model = Certificate
    fields = ["certificate_link", "status", "key_origin", "issued", "revoked", "revoked_by", "revoked_reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ["-issued_at"]

    @admin.display(description="certificate")
    def certificate_link(self, obj: Certificate) -> str:
        url = reverse("admin:provisioning_certificate_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.certificate_id[:16] + "…")

    @admin.display(description="issued")
    def issued(self, obj: Certificate) -> str:
        return moment(obj.issued_at)

    @admin.display(description="revoked")
    def revoked(self, obj: Certificate) -> str:
        return moment(obj.revoked_at)


@admin.register(Device)
class DeviceAdmin(ImportViews, CsvExportMixin, BigListAdmin):
    list_display = ["serial", "product", "state", "current_certificate_id", "token_expires", "registered", "updated"]
    # Date filters rather than date_hierarchy here and below: the hierarchy lists distinct years and
    # months with a query that reads every row (a second per 100,000); the filters' ranges use indexes.
    list_filter = [
        "state",
        "product",
        ImportBatchFilter,
        RotationFilter,
        ("created_at", admin.DateFieldListFilter),
    ]
    # What the box shows it searches; get_search_results does it on indexes (selectors.device_search):
    # a "contains" search over a join would read the whole table.
    search_fields = ["serial", "current_certificate__certificate_id", "current_certificate__fingerprint_sha256"]
    search_help_text = (
        "Serials by their beginning (SN-2026-04 finds every serial that starts so; several words find "
        "each), or a certificate's whole id or SHA-256 fingerprint."
    )
    list_select_related = ["product", "current_certificate"]
    ordering = ["serial"]
    actions = ["issue_tokens_action", "revoke_action", "reset_action"]
    inlines = [CertificateInline]
    export_fields = (
        "serial",
        "product__name",
        "state",
        "thing_name",
        "current_certificate__certificate_id",
        "token_expires_at",
        "last_request_at",
        "created_at",
    )

    @admin.display(description="token expires", ordering="token_expires_at")
    def token_expires(self, obj: Device) -> str:
        # Only while the token is waiting for its device; afterwards the date means nothing.
        return moment_short(obj.token_expires_at) if obj.allows(DeviceAction.VEND) else "-"

    @admin.display(description="registered", ordering="created_at")
    def registered(self, obj: Device) -> str:
        return moment_short(obj.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Device) -> str:
        return moment_short(obj.updated_at)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        return device_search(queryset, search_terms(search_term)), False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Device]:
        queryset = device_admin_queryset()
        ordering = self.get_ordering(request)
        return queryset.order_by(*ordering) if ordering else queryset

    @admin.display(description="certificate", ordering="current_certificate__certificate_id")
    def current_certificate_id(self, obj: Device) -> str:
        return obj.current_certificate.certificate_id[:16] + "…" if obj.current_certificate else "-"

    def history_url(self, request: HttpRequest, obj: Device) -> str:
        return device_events_url(request.user, obj.serial)

    def history_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        # A device's history is its audit trail, not Django's (empty) change log.
        device = self.get_object(request, object_id)
        if device is None:
            raise Http404("No such device.")
        events = device_events_url(request.user, device.serial)
        if not events:
            raise PermissionDenied
        return HttpResponseRedirect(events)

    # Permissions: adding goes through the service; nothing is edited or deleted in place.
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_issue_token_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.issue_token")

    def has_revoke_device_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.revoke_device")

    def has_reset_device_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.reset_device")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = DeviceAddForm
            kwargs["fields"] = ["serial", "product"]
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None):
        # A device's own page draws its sections itself (device_page.py); nothing on it is a form field.
        return ["serial", "product"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None):
        return [] if obj is None else ["serial", "product"]

    def get_inlines(self, request: HttpRequest, obj: Any = None):
        return self.inlines if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Device, form: Any, change: bool) -> None:
        # The registration service writes the audit event and the DynamoDB outbox row with the device.
        registered = device_register(serial=obj.serial, product_name=obj.product.name, actor=actor_of(request))
        obj.pk = registered.pk
        obj.refresh_from_db()

    def log_addition(self, request: HttpRequest, obj: Any, message: Any):
        return None  # the audit log records it; Django's own LogEntry would only duplicate it

    def get_urls(self):
        return [
            *self.import_urls(),
            path("<int:pk>/revoke/", self.admin_site.admin_view(self.revoke_view), name="provisioning_device_revoke"),
            path("<int:pk>/reset/", self.admin_site.admin_view(self.reset_view), name="provisioning_device_reset"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Django quietly ignores an action the user may not run; refuse it outright instead.
        posted_action = request.POST.get("action") if request.method == "POST" else None
        if posted_action is not None and posted_action not in self.get_actions(request):
            raise PermissionDenied
        extra_context = {
            **(extra_context or {}),
            "can_import": self.has_import_devices_permission(request),
            **self.batch_context(request),
        }
        return super().changelist_view(request, extra_context)

    def batch_context(self, request: HttpRequest) -> dict[str, Any]:
        """The list filtered to one import: what it was, where its devices stand, and tokens one click away."""
        try:
            batch = import_batch_get(batch_id=uuid.UUID(request.GET.get("import_batch", "")))
        except ValueError:
            return {}  # no batch, or a value the filter refuses with its own 400
        if batch is None:
            return {}
        return {
            "batch": batch,
            "batch_devices": import_batch_devices(batch_id=batch.pk),
            "tokens_button": batch_tokens_button(request, batch.pk),
        }

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], add=False, change=False, form_url="", obj=None
    ) -> HttpResponse:
        if obj is not None:
            user = request.user
            context.update(
                sections=device_sections(obj, user=user, now=timezone.now()),
                certificates_url=device_certificates_url(user, obj.serial),
                events_url=device_events_url(user, obj.serial),
                # Each control only where the role may use it and the lifecycle allows it in this state.
                can_revoke=self.has_revoke_device_permission(request) and obj.allows(DeviceAction.REVOKE),
                can_reset=self.has_reset_device_permission(request) and obj.allows(DeviceAction.RESET),
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

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
