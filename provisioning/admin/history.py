"""The fleet's history, read-only for everyone: certificates, the audit log, the DynamoDB outbox.

Auditors read these lists all day: times to the second with their time zone, the event kind's label,
a date range, and serials and certificate ids that lead to the device's and the certificate's page for
the roles that may open those (the links are resolved once per page, not once per row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from ..models import AuditEvent, Certificate, DynamoOutbox
from ..selectors import certificate_pks_by_id, certificate_search, device_pks_by_serial, search_terms
from ..templatetags.cvm import moment
from .base import CsvExportMixin, ExactValueFilter, ReadOnlyAdmin
from .device_page import device_events_url
from .filters import DateRangeFilter


class PageLinks:
    """The device and certificate pages the rows of one page may link to, looked up for the whole page.

    Kept on the request: the list's columns are built per request and read it while the page renders.
    """

    def __init__(self, request: HttpRequest) -> None:
        self.devices = request.user.has_perm("provisioning.view_device")
        self.certificates = request.user.has_perm("provisioning.view_certificate")
        self.device_pks: dict[str, int] = {}
        self.certificate_pks: dict[str, int] = {}
        # Django compares a page's columns and fields by identity; built once per request.
        self.columns: dict[str, list[Any]] = {}

    @classmethod
    def of(cls, request: HttpRequest) -> PageLinks:
        if not hasattr(request, "cvm_page_links"):
            request.cvm_page_links = cls(request)
        return request.cvm_page_links

    def resolve(self, events: Iterable[AuditEvent]) -> None:
        events = list(events)
        if self.devices:
            self.device_pks.update(device_pks_by_serial({e.serial for e in events if e.serial}))
        if self.certificates:
            self.certificate_pks.update(certificate_pks_by_id({v for e in events for v in certificate_ids(e)}))

    def serial(self, serial: str) -> SafeString | str:
        pk = self.device_pks.get(serial)
        if pk is None:
            return serial or "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:provisioning_device_change", args=[pk]), serial)

    def certificate(self, certificate_id: str) -> SafeString | str:
        pk = self.certificate_pks.get(certificate_id)
        if pk is None:
            return certificate_id
        url = reverse("admin:provisioning_certificate_change", args=[pk])
        return format_html('<a href="{}" title="{}">{}…</a>', url, certificate_id, certificate_id[:16])


def certificate_ids(event: AuditEvent) -> list[str]:
    """The certificate ids an event names (`certificate_id`, `previous_certificate_id`, …)."""
    return [v for k, v in event.data.items() if k.endswith("certificate_id") and isinstance(v, str) and v]


def event_details(event: AuditEvent, links: PageLinks, *, short: bool = True) -> SafeString:
    """An event's data as key=value pairs, certificate ids linked; in the list, long values (fingerprints,
    messages) are cut to their start with the whole value on hover; the event's page shows them whole."""
    items = []
    for key, value in sorted(event.data.items()):
        if key.endswith("certificate_id") and isinstance(value, str):
            items.append((key, links.certificate(value)))
        elif short and len(text := str(value)) > 24:
            items.append((key, format_html('<span title="{}">{}…</span>', text, text[:16])))
        else:
            items.append((key, value))
    return format_html_join(", ", "{}={}", items)


def column(description: str, ordering: str | None = None) -> Callable[[Callable], Callable]:
    """A list column or page field built for one request (see PageLinks)."""

    def wrap(function: Callable) -> Callable:
        return admin.display(description=description, ordering=ordering)(function)

    return wrap


# --- Certificates -------------------------------------------------------------------------------


@admin.register(Certificate)
class CertificateAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_display = [
        "certificate_id_short",
        "device_link",
        "status",
        "key_origin",
        "issued",
        "revoked",
        "revoked_by",
        "revoked_reason",
    ]
    list_filter = [
        "status",
        "key_origin",
        "device__product",
        ("issued_at", DateRangeFilter),
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
        "issued",
        "issued_to_address",
        "revoked",
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
        # Every role that may open certificates may open devices (migration 0004_roles).
        url = reverse("admin:provisioning_device_change", args=[obj.device_id])
        return format_html('<a href="{}">{}</a>', url, obj.device.serial)

    @admin.display(description="issued", ordering="issued_at")
    def issued(self, obj: Certificate) -> str:
        return moment(obj.issued_at)

    @admin.display(description="revoked", ordering="revoked_at")
    def revoked(self, obj: Certificate) -> str:
        return moment(obj.revoked_at)


# --- Audit log ----------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_filter = [
        "kind",
        ("created_at", DateRangeFilter),
        ("serial", ExactValueFilter),  # the "audit events" links of devices and events
    ]
    search_fields = ["=serial", "=actor", "=client_address"]
    search_help_text = "A whole serial, actor (staff:NAME, device, system) or client address."
    ordering = ["-id"]  # newest first, chained or not yet
    export_fields = (
        "seq",
        "created_at",
        "kind",
        "kind_label",
        "actor",
        "serial",
        "client_address",
        "data",
        "prev_hash",
        "hash",
    )

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        links = PageLinks.of(request)
        if "list" in links.columns:
            return links.columns["list"]

        @column("time", ordering="created_at")
        def time(event: AuditEvent) -> str:
            return moment(event.created_at)

        @column("serial", ordering="serial")
        def serial(event: AuditEvent) -> SafeString | str:
            if not event.serial:
                return "-"
            only = reverse("admin:provisioning_auditevent_changelist") + "?" + urlencode({"serial": event.serial})
            return format_html(
                '{} <a href="{}" class="cvm-only" title="only this serial\'s events">events</a>',
                links.serial(event.serial),
                only,
            )

        @column("details")
        def details(event: AuditEvent) -> SafeString:
            return event_details(event, links)

        links.columns["list"] = ["seq", time, "kind", serial, "actor", "client_address", details]
        return links.columns["list"]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl") if isinstance(response, TemplateResponse) else None
        if changelist is not None:
            PageLinks.of(request).resolve(changelist.result_list)  # before the page renders its rows
        return response

    def get_fields(self, request: HttpRequest, obj: AuditEvent | None = None) -> list[Any]:
        links = PageLinks.of(request)
        if "page" in links.columns:
            return links.columns["page"]
        if obj is not None:
            links.resolve([obj])

        @column("time")
        def time(event: AuditEvent) -> str:
            return moment(event.created_at)

        @column("kind")
        def kind(event: AuditEvent) -> str:
            return f"{event.get_kind_display()} ({event.kind})"

        @column("serial")
        def serial(event: AuditEvent) -> SafeString | str:
            return links.serial(event.serial)

        @column("data")
        def data(event: AuditEvent) -> SafeString:
            return event_details(event, links, short=False)

        links.columns["page"] = ["seq", time, kind, "actor", serial, "client_address", data, "prev_hash", "hash"]
        return links.columns["page"]

    def get_readonly_fields(self, request: HttpRequest, obj: AuditEvent | None = None) -> list[Any]:
        return self.get_fields(request, obj)

    def history_url(self, request: HttpRequest, obj: AuditEvent) -> str:
        return ""  # an event is history itself

    def export_value(self, obj: AuditEvent, name: str) -> Any:
        if name == "kind_label":
            return obj.get_kind_display()
        return super().export_value(obj, name)


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
