"""The staff portal. Every change goes through a service; the admin only collects input and reports.

Roles (SPEC §8) are groups created by a migration: `factory` adds and imports serials and issues
tokens, `security` also revokes and resets, `auditor` reads everything and exports CSV. Nobody edits a
device, certificate or audit event directly, superusers included: the state machine and the audit
chain would not survive it.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

from django import forms
from django.apps import apps
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.exceptions import DisallowedModelAdminLookup, DisallowedModelAdminToField
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.widgets import url_params_from_lookup_dict
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from .imports import import_batch_confirm, import_batch_create
from .models import AuditEvent, Certificate, Device, DeviceState, DynamoOutbox, ImportBatch, ImportState, Product
from .services import (
    ImportInvalid,
    IssuedToken,
    ServiceError,
    device_register,
    devices_reset,
    devices_revoke,
    tokens_issue,
)
from .tokenfiles import tokens_csv
from .validators import (
    PRODUCT_NAME_MAX,
    SERIAL_RE,
    TOKEN_TTL_MAX_DAYS,
    TOKEN_TTL_MIN_DAYS,
    validate_product_name,
)

# A million serials with a product column is about 25 MB; the file is kept until it is imported.
MAX_IMPORT_BYTES = 64 * 1024 * 1024


def actor_of(request: HttpRequest) -> str:
    return f"staff:{request.user.get_username()}"


NONCES_KEY = "cvm_confirmations"
# A confirmation page lists this many devices; a selection of a million is summed up, not printed.
CONFIRM_LIST_ROWS = 200


def confirmation_nonce(request: HttpRequest) -> str:
    """A one-time value for a confirmation form, so a reloaded or double-clicked POST does nothing.

    Without it, reloading the token page would issue new tokens and silently void the ones just shown.
    """
    nonce = secrets.token_urlsafe(16)
    request.session[NONCES_KEY] = [*request.session.get(NONCES_KEY, [])[-19:], nonce]
    return nonce


def confirmation_consume(request: HttpRequest) -> bool:
    nonces = request.session.get(NONCES_KEY, [])
    nonce = request.POST.get("nonce", "")
    if nonce not in nonces:
        return False
    request.session[NONCES_KEY] = [n for n in nonces if n != nonce]
    return True


# --- Changelist URLs ------------------------------------------------------------------------------


class ChangelistRefused(Exception):
    """A changelist URL asked for something the list does not offer; the message says what."""


class DeclaredFiltersChangeList(ChangeList):
    """A changelist whose URL may use the list's declared filters, search, ordering and paging only.

    Django applies every other parameter as a queryset lookup, and its `lookup_allowed` passes any
    lookup on the model's own fields: `?serial__regex=(.*[0-9]){4}Q` runs a backtracking regular
    expression over every row, `?token_digest__startswith=ab` reveals a digest prefix by prefix, and
    `?data__contains=x` fails with a 500 on SQLite. Here a parameter that no declared filter consumed
    is refused, as is a value a declared filter cannot use, with a 400 that says so.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except (DisallowedModelAdminLookup, DisallowedModelAdminToField) as exc:
            raise ChangelistRefused(str(exc)) from exc
        except IncorrectLookupParameters as exc:
            # Django would redirect to "?e=1" and drop every filter without saying which was wrong.
            raise ChangelistRefused(f"A filter value this list cannot use: {str(exc)[:200]}") from exc

    def get_results(self, request: HttpRequest) -> None:
        try:
            super().get_results(request)
        except IncorrectLookupParameters as exc:  # Django's way of saying the page does not exist
            raise ChangelistRefused(f"This list has no page {self.page_num}.") from exc

    def get_filters_params(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        lookup_params = super().get_filters_params(params)
        # The filters a change form preserves for its way back to the list; never a lookup here.
        lookup_params.pop("_changelist_filters", None)
        return lookup_params

    def get_filters(self, request: HttpRequest) -> tuple[Any, ...]:
        requested = self.get_filters_params()
        result = super().get_filters(request)
        remaining = result[2]  # what the declared filters left: Django would apply it as lookups
        undeclared = sorted(
            key for key in remaining if key in requested and not self._made_by_the_admin(key, requested)
        )
        if undeclared:
            raise ChangelistRefused(f"This list cannot be filtered by {', '.join(undeclared)}.")
        return result

    def _made_by_the_admin(self, key: str, requested: dict[str, list[str]]) -> bool:
        hierarchy = self.date_hierarchy
        if hierarchy and key in (f"{hierarchy}__gte", f"{hierarchy}__lt") and f"{hierarchy}__year" in requested:
            return True  # the date hierarchy turns its year/month/day into this range itself
        # A raw-id widget's popup narrows the list by the foreign key's limit_choices_to.
        for fk_lookup in self.model._meta.related_fkey_lookups:
            allowed = url_params_from_lookup_dict(fk_lookup() if callable(fk_lookup) else fk_lookup)
            if all(allowed.get(key) == value for value in requested[key]):
                return True
        return False


@functools.cache
def _declared_filters_only(changelist_class: type[ChangeList]) -> type[ChangeList]:
    if issubclass(changelist_class, DeclaredFiltersChangeList):
        return changelist_class
    return type(f"DeclaredFilters{changelist_class.__name__}", (DeclaredFiltersChangeList, changelist_class), {})


class DeclaredLookupsOnly:
    """Every changelist of the portal: its URL accepts declared filters, search, ordering and paging only.

    Anything else is a 400 naming the parameter, on the list and on its CSV export alike.
    """

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _declared_filters_only(super().get_changelist(request, **kwargs))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        try:
            return super().changelist_view(request, extra_context)
        except ChangelistRefused as exc:
            return self.changelist_refused(request, exc)

    def changelist_refused(self, request: HttpRequest, exc: ChangelistRefused) -> TemplateResponse:
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "opts": opts,
            "title": "This list cannot show that",
            "reason": str(exc),
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        }
        return TemplateResponse(request, "admin/changelist_refused.html", context, status=400)


def declared_lookups_everywhere(site: admin.AdminSite) -> None:
    """Give every registered admin the rule, Django's users and groups and third-party apps' included.

    Called once every app's admin module has registered its models (PortalAdminConfig.ready).
    """
    for model in apps.get_models():
        if not site.is_registered(model):
            continue
        model_admin = site.get_model_admin(model)
        if isinstance(model_admin, DeclaredLookupsOnly):
            continue
        original = type(model_admin)
        site.unregister(model)
        site.register(model, type(original.__name__, (DeclaredLookupsOnly, original), {}))


class ExactValueFilter(admin.FieldListFilter):
    """One exact value of an indexed field, as the portal's own links ask for it (`?serial=SN-1`).

    Lists no choices (on a million rows that would read them all); while in use it shows its value with
    a way back to the whole list, otherwise nothing.
    """

    template = "admin/exact_value_filter.html"

    def __init__(self, field: Any, request: HttpRequest, params: dict, model: Any, model_admin: Any, field_path: str):
        self.lookup_kwarg = field_path
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = field_path.replace("__", " ")

    def expected_parameters(self) -> list[str]:
        return [self.lookup_kwarg]

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        values = self.used_parameters.get(self.lookup_kwarg, [])
        yield {
            "selected": not values,
            "query_string": changelist.get_query_string(remove=[self.lookup_kwarg]),
            "display": "All",
        }
        for value in values:
            yield {"selected": True, "query_string": changelist.get_query_string(), "display": value}


class PortalModelAdmin(DeclaredLookupsOnly, admin.ModelAdmin):
    pass


def selection_digest(devices: list[Device]) -> str:
    """Names a selection of devices in 64 characters, so a confirmation can check it acts on what it showed."""
    return hashlib.sha256(",".join(str(pk) for pk in sorted(d.pk for d in devices)).encode()).hexdigest()


class Echo:
    """A write-only file for csv.writer that hands each line straight to the streaming response."""

    def write(self, value: str) -> str:
        return value


def _csv_safe(value: Any) -> str:
    text = "" if value is None else str(value)
    # A cell that starts like a formula is run by spreadsheets; a quote makes it plain text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class CsvExportMixin:
    """An "Export CSV" link on the changelist that exports exactly the filtered, searched list."""

    export_fields: tuple[str, ...] = ()

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path("export/", self.admin_site.admin_view(self.export_view), name=f"{info[0]}_{info[1]}_export"),
            *super().get_urls(),
        ]

    def can_export(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request) and request.user.has_perm("provisioning.view_audit")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_export": self.can_export(request)}
        return super().changelist_view(request, extra_context)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        if not self.can_export(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except ChangelistRefused as exc:
            return self.changelist_refused(request, exc)  # type: ignore[attr-defined]
        queryset = changelist.get_queryset(request)
        writer = csv.writer(Echo())

        def rows() -> Iterator[str]:
            yield writer.writerow(self.export_fields)
            for obj in queryset.iterator(chunk_size=2000):
                yield writer.writerow([_csv_safe(self.export_value(obj, name)) for name in self.export_fields])

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{self.model._meta.model_name}s.csv"'
        add_never_cache_headers(response)
        return response

    def export_value(self, obj: Any, name: str) -> Any:
        value = obj
        for part in name.split("__"):
            value = getattr(value, part, None)
        return value


class LargeTablePaginator(Paginator):
    """Never counts a whole large table: an unfiltered list uses an estimate.

    Filtered lists are counted (they run on an index); the unfiltered one would scan every row. The
    estimate is PostgreSQL's planner statistic, or the highest primary key where there is none (rows
    here are never deleted, so it is close).
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or queryset.query.where:
            return super().count
        model = queryset.model
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] > 0:
                return int(row[0])
        return model._default_manager.aggregate(highest=Max("pk"))["highest"] or 0


class BigListAdmin(PortalModelAdmin):
    """Changelists that stay fast on millions of rows (no full count, estimated pagination)."""

    paginator = LargeTablePaginator
    show_full_result_count = False
    # Facet counts ("?_facets") count every filter choice over the whole filtered table.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100


class NoEditing:
    """Nobody adds, changes or deletes here, superusers included."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdmin(NoEditing, BigListAdmin):
    pass


# --- Products -----------------------------------------------------------------------------------


@admin.register(Product)
class ProductAdmin(PortalModelAdmin):
    list_display = ["name", "description", "created_at"]
    search_fields = ["name"]
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


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with the header serial or serial,product")
    product = forms.CharField(
        required=False,
        max_length=PRODUCT_NAME_MAX,
        validators=[validate_product_name],
        help_text="product for rows that name none",
    )


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


class CertificateInline(NoEditing, admin.TabularInline):
    model = Certificate
    fields = ["certificate_link", "status", "key_origin", "fingerprint_sha256", "issued_at", "revoked_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    ordering = ["-issued_at"]

    @admin.display(description="certificate")
    def certificate_link(self, obj: Certificate) -> str:
        url = reverse("admin:provisioning_certificate_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.certificate_id[:16] + "…")


@admin.register(Device)
class DeviceAdmin(CsvExportMixin, BigListAdmin):
    list_display = ["serial", "product", "state", "current_certificate_id", "token_expires_at", "updated_at"]
    # Date filters rather than date_hierarchy here and below: the hierarchy lists distinct years and
    # months with a query that reads every row (a second per 100,000); the filters' ranges use indexes.
    list_filter = ["state", "product", ("created_at", admin.DateFieldListFilter)]
    # Exact matches: a "contains" search over a join reads the whole table.
    search_fields = ["=serial", "=current_certificate__certificate_id", "=current_certificate__fingerprint_sha256"]
    list_select_related = ["product", "current_certificate"]
    ordering = ["serial"]
    actions = ["issue_tokens_action", "revoke_action", "reset_action"]
    inlines = [CertificateInline]
    readonly_fields = [
        "serial",
        "product",
        "state",
        "thing_name",
        "current_certificate",
        "token_issued_at",
        "token_expires_at",
        "last_request_at",
        "claimed_at",
        "aws_cleanup_pending",
        "version",
        "created_at",
        "updated_at",
        "history_links",
    ]
    fields = readonly_fields
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

    @admin.display(description="certificate", ordering="current_certificate__certificate_id")
    def current_certificate_id(self, obj: Device) -> str:
        return obj.current_certificate.certificate_id[:16] + "…" if obj.current_certificate else "-"

    @admin.display(description="history")
    def history_links(self, obj: Device) -> str:
        certificates = (
            reverse("admin:provisioning_certificate_changelist") + "?" + urlencode({"device__serial": obj.serial})
        )
        events = reverse("admin:provisioning_auditevent_changelist") + "?" + urlencode({"serial": obj.serial})
        return format_html('<a href="{}">certificates</a> · <a href="{}">audit events</a>', certificates, events)

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

    def has_import_devices_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.import_devices")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = DeviceAddForm
            kwargs["fields"] = ["serial", "product"]
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None):
        return ["serial", "product"] if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None):
        return [] if obj is None else self.readonly_fields

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
            path("import/", self.admin_site.admin_view(self.import_view), name="provisioning_device_import"),
            path(
                "import/<uuid:batch_id>/",
                self.admin_site.admin_view(self.import_batch_view),
                name="provisioning_device_import_batch",
            ),
            path("<int:pk>/revoke/", self.admin_site.admin_view(self.revoke_view), name="provisioning_device_revoke"),
            path("<int:pk>/reset/", self.admin_site.admin_view(self.reset_view), name="provisioning_device_reset"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Django quietly ignores an action the user may not run; refuse it outright instead.
        posted_action = request.POST.get("action") if request.method == "POST" else None
        if posted_action is not None and posted_action not in self.get_actions(request):
            raise PermissionDenied
        extra_context = {**(extra_context or {}), "can_import": self.has_import_devices_permission(request)}
        return super().changelist_view(request, extra_context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_revoke": self.has_revoke_device_permission(request),
            "can_reset": self.has_reset_device_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # --- Import -------------------------------------------------------------------------------

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Upload: the file is checked and kept on the server; its page previews it and confirms it."""
        if not self.has_import_devices_permission(request):
            raise PermissionDenied
        context: dict[str, Any] = {**self.admin_site.each_context(request), "opts": self.model._meta}
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            if upload.size > MAX_IMPORT_BYTES:
                form.add_error("file", f"the file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB")
            else:
                try:
                    batch = import_batch_create(
                        file_name=upload.name,
                        content=upload.read(),
                        default_product=form.cleaned_data["product"] or None,
                        actor=actor_of(request),
                    )
                except ImportInvalid as exc:
                    context["errors"] = exc.errors
                except ServiceError as exc:
                    form.add_error("file", str(exc))
                else:
                    return HttpResponseRedirect(reverse("admin:provisioning_device_import_batch", args=[batch.pk]))
        context["form"] = form
        context["title"] = "Import serials"
        context["recent"] = ImportBatch.objects.defer("content", "preview")[:10]
        return TemplateResponse(request, "admin/provisioning/device/import.html", context)

    def import_batch_view(self, request: HttpRequest, batch_id: Any) -> HttpResponse:
        """One upload: its preview and the confirmation (which posts nothing but the batch's address),
        then the import's progress, refreshed until the worker is done."""
        if not self.has_import_devices_permission(request):
            raise PermissionDenied
        batch = get_object_or_404(ImportBatch.objects.defer("content"), pk=batch_id)
        if request.method == "POST" and "confirm" in request.POST:
            if import_batch_confirm(batch_id=batch.pk, actor=actor_of(request)):
                self.message_user(request, f"Import of {batch.new_count} new serial(s) queued.", messages.SUCCESS)
            else:
                already = "This import was already confirmed or has expired; nothing was done again."
                self.message_user(request, already, messages.WARNING)
            return HttpResponseRedirect(request.path)
        now = timezone.now()

        def seconds_since(moment: Any) -> int | None:
            return None if moment is None else max(0, round(((batch.finished_at or now) - moment).total_seconds()))

        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Import {batch.file_name}",
            "batch": batch,
            "states": ImportState,
            "running": batch.state in (ImportState.QUEUED, ImportState.IMPORTING),
            "waiting_seconds": seconds_since(batch.confirmed_at),
            "reading_seconds": seconds_since(batch.started_at),
            "writing_seconds": seconds_since(batch.writing_started_at),
        }
        response = TemplateResponse(request, "admin/provisioning/device/import_batch.html", context)
        add_never_cache_headers(response)
        return response

    # --- Tokens -------------------------------------------------------------------------------

    @admin.action(description="Issue registration tokens", permissions=["issue_token"])
    def issue_tokens_action(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        devices = list(queryset.select_related("product").order_by("serial"))
        form = TtlForm(request.POST if "confirm" in request.POST else None)
        if "confirm" in request.POST and form.is_valid():
            if not self.confirmed_once(request, devices):
                return None
            try:
                tokens = tokens_issue(
                    serials=[d.serial for d in devices], actor=actor_of(request), ttl_days=form.cleaned_data["ttl_days"]
                )
            except ServiceError as exc:
                self.message_user(request, f"No tokens were issued: {exc}", messages.ERROR)
                return None
            return self.tokens_response(request, tokens, failed={})
        blocked = [d for d in devices if d.state not in (DeviceState.REGISTERED, DeviceState.TOKEN_ISSUED)]
        return self.confirmation(
            request,
            devices,
            form=form,
            action="issue_tokens_action",
            title="Issue registration tokens",
            warning="A device that already has an unused token gets a new one; the old token stops working.",
            blocked=blocked,
            blocked_note="needs a reset instead (active or revoked) or is being served now",
        )

    def tokens_response(
        self, request: HttpRequest, tokens: list[IssuedToken], *, failed: dict[str, str]
    ) -> TemplateResponse:
        """The one and only time these tokens are shown. Nothing of them is kept on the server."""
        csv_text = tokens_csv(tokens)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Registration tokens — shown once",
            "tokens": tokens,
            "failed": failed,
            "csv_data_uri": "data:text/csv;base64," + base64.b64encode(csv_text.encode()).decode(),
        }
        response = TemplateResponse(request, "admin/provisioning/device/tokens.html", context)
        add_never_cache_headers(response)
        response["Referrer-Policy"] = "no-referrer"
        return response

    # --- Revoke and reset ---------------------------------------------------------------------

    @admin.action(description="Revoke certificates", permissions=["revoke_device"])
    def revoke_action(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        return self._revoke(request, list(queryset.select_related("current_certificate").order_by("serial")))

    def revoke_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._one_device(request, pk, allowed=self.has_revoke_device_permission(request), act=self._revoke)

    def _one_device(self, request: HttpRequest, pk: int, *, allowed: bool, act: Any) -> HttpResponse:
        """Revoke or reset from the device page: the bulk flow with one device, back to its page after."""
        if not allowed:
            raise PermissionDenied
        device = get_object_or_404(Device.objects.select_related("current_certificate"), pk=pk)
        response = act(request, [device], single=True)
        return response or HttpResponseRedirect(reverse("admin:provisioning_device_change", args=[pk]))

    def _revoke(self, request: HttpRequest, devices: list[Device], single: bool = False) -> HttpResponse | None:
        form = RevokeForm(request.POST if "confirm" in request.POST else None)
        if "confirm" in request.POST and form.is_valid():
            if not self.confirmed_once(request, devices):
                return None
            outcome = devices_revoke(
                serials=[d.serial for d in devices], reason=form.cleaned_data["reason"], actor=actor_of(request)
            )
            self.report(request, "revoked", outcome.succeeded, outcome.failed)
            return None
        return self.confirmation(
            request,
            devices,
            form=form,
            action=None if single else "revoke_action",
            title="Revoke certificates",
            warning="Each certificate is set REVOKED in AWS IoT and detached from its thing and policy. "
            "The devices can no longer connect. This cannot be undone; a reset issues a new token.",
            blocked=[d for d in devices if d.state != DeviceState.ACTIVE],
            blocked_note="is not active, so there is nothing to revoke",
        )

    @admin.action(description="Reset (revoke and issue a new token)", permissions=["reset_device"])
    def reset_action(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        return self._reset(request, list(queryset.select_related("current_certificate").order_by("serial")))

    def reset_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._one_device(request, pk, allowed=self.has_reset_device_permission(request), act=self._reset)

    def _reset(self, request: HttpRequest, devices: list[Device], single: bool = False) -> HttpResponse | None:
        form = ResetForm(request.POST if "confirm" in request.POST else None)
        if "confirm" in request.POST and form.is_valid():
            if not self.confirmed_once(request, devices):
                return None
            outcome = devices_reset(
                serials=[d.serial for d in devices],
                reason=form.cleaned_data["reason"],
                actor=actor_of(request),
                ttl_days=form.cleaned_data["ttl_days"],
            )
            if not outcome.tokens:
                self.report(request, "reset", outcome.succeeded, outcome.failed)
                return None
            return self.tokens_response(request, outcome.tokens, failed=outcome.failed)
        return self.confirmation(
            request,
            devices,
            form=form,
            action=None if single else "reset_action",
            title="Reset devices",
            warning="An active certificate is revoked in AWS IoT first; each device then gets a new one-time "
            "token, shown once on the next page.",
            blocked=[d for d in devices if d.state not in (DeviceState.ACTIVE, DeviceState.REVOKED)],
            blocked_note="has never had a certificate; issue a token instead",
        )

    def confirmation(
        self,
        request: HttpRequest,
        devices: list[Device],
        *,
        form: forms.Form,
        action: str | None,
        title: str,
        warning: str,
        blocked: list[Device],
        blocked_note: str,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "devices": devices[:CONFIRM_LIST_ROWS],
            "device_count": len(devices),
            "blocked": {d.serial for d in blocked},
            "blocked_count": len(blocked),
            "blocked_note": blocked_note,
            "warning": warning,
            "form": form,
            "action": action,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            # "Select all N devices" is confirmed by the list's filters (the form posts back to the same
            # address), not device by device: Django refuses a form of more than 1,000 fields.
            "select_across": request.POST.get("select_across") == "1",
            "selection": selection_digest(devices),
            "nonce": confirmation_nonce(request),
        }
        return TemplateResponse(request, "admin/provisioning/device/confirm.html", context)

    def confirmed_once(self, request: HttpRequest, devices: list[Device]) -> bool:
        if request.POST.get("selection") != selection_digest(devices):
            # The filters now select other devices (new ones registered, states changed): what the
            # confirmation page listed is not what would be done.
            self.message_user(
                request,
                "The selection changed since the confirmation page was shown; nothing was done. Select again.",
                messages.WARNING,
            )
            return False
        if confirmation_consume(request):
            return True
        self.message_user(
            request, "This confirmation was already used or has expired; nothing was done again.", messages.WARNING
        )
        return False

    def report(self, request: HttpRequest, verb: str, succeeded: list[str], failed: dict[str, str]) -> None:
        if succeeded:
            self.message_user(request, f"{verb.capitalize()} {len(succeeded)} device(s): {', '.join(succeeded[:50])}")
        for serial, why in failed.items():
            self.message_user(request, f"{serial}: not {verb}: {why}", messages.ERROR)


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
    search_fields = ["=certificate_id", "=fingerprint_sha256", "=device__serial", "=revoked_by"]
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
    ordering = ["-seq"]
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
    ordering = ["-id"]
