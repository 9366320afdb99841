"""The fleet's history, read-only for everyone: certificates, the audit log, the DynamoDB outbox."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from ..models import AuditEvent, Certificate, DynamoOutbox
from ..selectors import certificate_search, search_terms
from .base import CsvExportMixin, ExactValueFilter, ReadOnlyAdmin
from .device_page import device_events_url

# --- Certificates -------------------------------------------------------------------------------


@admin.register(Certificate)
class CertificateAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_display = [
        "certificate_id_short",
        "device_link",
        "status",
        "key_origin",
        "issued_at",
        "revoked_at",
        "revoked_by",
        "revoked_reason",
    ]
    list_filter = [
        "status",
        "key_origin",
        "device__product",
        ("issued_at", admin.DateFieldListFilter),
        ("device__serial", ExactValueFilter),  # the device page's "certificates" link
    ]
    search_fields = ["certificate_id", "fingerprint_sha256", "device__serial", "revoked_by"]
    search_help_text = (
        "Certificate ids and serials by their beginning (the list's shortened ids work), or a whole SHA-256 "
        "fingerprint, or who revoked (staff:NAME)."
    )
    list_select_related = ["device"]
    fields = [
        "certificate_id",
        "arn",
        "device_link",
        "thing_name",
        "fingerprint_sha256",
        "key_origin",
        "status",
        "issued_at",
        "issued_to_address",
        "revoked_at",
        "revoked_by",
        "revoked_reason",
    ]
    readonly_fields = fields
    export_fields = (
        "certificate_id",
        "arn",
        "device__serial",
        "thing_name",
        "fingerprint_sha256",
        "key_origin",
        "status",
        "issued_at",
        "issued_to_address",
        "revoked_at",
        "revoked_by",
        "revoked_reason",
    )

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        return certificate_search(queryset, search_terms(search_term)), False

    def history_url(self, request: HttpRequest, obj: Certificate) -> str:
        return device_events_url(request.user, obj.device.serial)

    def history_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        # A certificate's history is its device's audit trail, not Django's (empty) change log.
        certificate = self.get_object(request, object_id)
        if certificate is None:
            raise Http404("No such certificate.")
        events = device_events_url(request.user, certificate.device.serial)
        if not events:
            raise PermissionDenied
        return HttpResponseRedirect(events)

    @admin.display(description="certificate id", ordering="certificate_id")
    def certificate_id_short(self, obj: Certificate) -> str:
        return obj.certificate_id[:16] + "…"

    @admin.display(description="device", ordering="device__serial")
    def device_link(self, obj: Certificate) -> str:
        url = reverse("admin:provisioning_device_change", args=[obj.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.device.serial)


# --- Audit log ----------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_display = ["seq", "created_at", "kind", "serial_link", "actor", "client_address", "summary"]
    list_filter = [
        "kind",
        ("created_at", admin.DateFieldListFilter),
        ("serial", ExactValueFilter),  # the "audit events" links of devices and events
    ]
    search_fields = ["=serial", "=actor", "=client_address"]
    search_help_text = "A whole serial, actor (staff:NAME, device, system) or client address."
    ordering = ["-seq"]

    def history_url(self, request: HttpRequest, obj: AuditEvent) -> str:
        return ""  # an event is history itself

    fields = ["seq", "created_at", "kind", "actor", "serial", "client_address", "data", "prev_hash", "hash"]
    readonly_fields = fields
    export_fields = ("seq", "created_at", "kind", "actor", "serial", "client_address", "data", "prev_hash", "hash")

    @admin.display(description="serial", ordering="serial")
    def serial_link(self, obj: AuditEvent) -> str:
        if not obj.serial:
            return "-"
        url = reverse("admin:provisioning_auditevent_changelist") + "?" + urlencode({"serial": obj.serial})
        return format_html('<a href="{}">{}</a>', url, obj.serial)

    @admin.display(description="details")
    def summary(self, obj: AuditEvent) -> str:
        return ", ".join(f"{key}={value}" for key, value in sorted(obj.data.items()))[:160]


# --- DynamoDB outbox ----------------------------------------------------------------------------


@admin.register(DynamoOutbox)
class DynamoOutboxAdmin(ReadOnlyAdmin):
    list_display = ["id", "serial", "version", "created_at", "attempts", "last_error", "next_attempt_at", "done_at"]
    list_filter = [("done_at", admin.EmptyFieldListFilter), "last_error"]
    search_fields = ["=serial"]
    search_help_text = "A whole serial."
    ordering = ["-id"]

    def history_url(self, request: HttpRequest, obj: DynamoOutbox) -> str:
        return ""
