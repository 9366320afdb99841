"""Automation: staff API keys and webhook endpoints, made by `create_api_key` and `add_webhook`, listed,
revoked and switched off here; webhook deliveries, read-only, with the failing ones one filter away."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from rest_framework_api_key.models import APIKey

from ..models import StaffApiKey, WebhookDelivery, WebhookEndpoint
from ..services.apikeys import api_key_revoke
from ..services.webhooks import webhook_set_enabled
from .base import NoEditing, PortalModelAdmin, ReadOnlyAdmin, actor_of

# --- Staff API keys -----------------------------------------------------------------------------

# The library's own key model is not used (provisioning.StaffApiKey carries the role); its page goes.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


@admin.register(StaffApiKey)
class StaffApiKeyAdmin(NoEditing, PortalModelAdmin):
    """Keys are made by `create_api_key` (printed once); here they are listed and revoked."""

    list_display = ["name", "role", "prefix", "created", "created_by", "last_used_at", "revoked", "revoked_by"]
    list_filter = ["role", "revoked"]
    search_fields = ["=name", "=prefix"]
    ordering = ["-created"]
    actions = ["revoke_action"]
    fields = [
        "name",
        "role",
        "prefix",
        "created",
        "created_by",
        "expiry_date",
        "last_used_at",
        "revoked",
        "revoked_at",
        "revoked_by",
    ]
    readonly_fields = fields

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.change_staffapikey")

    @admin.action(description="Revoke the selected keys (for good)", permissions=["revoke"])
    def revoke_action(self, request: HttpRequest, queryset: QuerySet[StaffApiKey]) -> None:
        revoked = [key.name for key in queryset if api_key_revoke(key_id=key.pk, actor=actor_of(request))]
        if revoked:
            self.message_user(request, f"Revoked {len(revoked)} key(s): {', '.join(revoked[:50])}")
        else:
            self.message_user(request, "The selected keys were revoked already.", messages.WARNING)


# --- Webhooks -----------------------------------------------------------------------------------


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(NoEditing, PortalModelAdmin):
    """Endpoints are added by `add_webhook` (the secret is printed once); here they are listed, disabled
    and enabled again. The secret is never shown."""

    list_display = ["id", "url", "description", "types", "enabled", "pending", "failing", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["=url"]
    ordering = ["id"]
    actions = ["disable_action", "enable_action"]
    fields = [
        "url",
        "description",
        "types",
        "enabled",
        "created_at",
        "created_by",
        "disabled_at",
        "disabled_by",
        "deliveries_link",
    ]
    readonly_fields = fields

    @admin.display(description="event types")
    def types(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    @admin.display(description="pending")
    def pending(self, obj: WebhookEndpoint) -> int:
        return obj.deliveries.filter(delivered_at__isnull=True).count()

    @admin.display(description="failing")
    def failing(self, obj: WebhookEndpoint) -> int:
        return obj.deliveries.filter(delivered_at__isnull=True, attempts__gt=0).count()

    @admin.display(description="deliveries")
    def deliveries_link(self, obj: WebhookEndpoint) -> str:
        url = (
            reverse("admin:provisioning_webhookdelivery_changelist") + "?" + urlencode({"endpoint__id__exact": obj.pk})
        )
        return format_html('<a href="{}">deliveries</a>', url)

    def has_toggle_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.change_webhookendpoint")

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint], enabled: bool) -> None:
        changed = [
            e.pk for e in queryset if webhook_set_enabled(endpoint_id=e.pk, enabled=enabled, actor=actor_of(request))
        ]
        verb = "Enabled" if enabled else "Disabled"
        self.message_user(request, f"{verb} {len(changed)} endpoint(s).")

    @admin.action(description="Disable (send nothing; pending deliveries wait)", permissions=["toggle"])
    def disable_action(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        self._set_enabled(request, queryset, enabled=False)

    @admin.action(description="Enable (pending deliveries go out)", permissions=["toggle"])
    def enable_action(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        self._set_enabled(request, queryset, enabled=True)


class DeliveryStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "pending"), ("failing", "failing (pending, tried)"), ("delivered", "delivered")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> QuerySet[WebhookDelivery]:
        value = self.value()
        if value == "pending":
            return queryset.filter(delivered_at__isnull=True)
        if value == "failing":
            return queryset.filter(delivered_at__isnull=True, attempts__gt=0)
        if value == "delivered":
            return queryset.filter(delivered_at__isnull=False)
        return queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "endpoint",
        "event_type",
        "serial",
        "created_at",
        "attempts",
        "last_status",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = [DeliveryStatusFilter, "event_type", "endpoint"]
    search_fields = ["=serial", "=message_id"]
    list_select_related = ["endpoint"]
    ordering = ["-id"]
    fields = [
        "endpoint",
        "message_id",
        "event_type",
        "serial",
        "body",
        "created_at",
        "attempts",
        "last_attempt_at",
        "last_status",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    readonly_fields = fields
