"""Products and devices: the device list and a device's page; imports (imports.py) and the confirmed
actions (actions.py) are mixed in.

Every change goes through a service; the admin collects input, asks the lifecycle table what each
device's state allows, and reports. Nobody edits a device in place, superusers included: the state
machine and the audit chain would not survive it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from ..aws import AwsError
from ..models import Certificate, Device, DeviceAction, Product
from ..selectors import device_admin_queryset, device_search, import_batch_devices, import_batch_get, search_terms
from ..services import ServiceError, device_register
from ..services.products import product_configure
from ..templatetags.cvm import moment, moment_short
from ..validators import SERIAL_MESSAGE, SERIAL_RE
from .actions import DeviceActions
from .base import BigListAdmin, CsvExportMixin, NoEditing, PortalModelAdmin, actor_of
from .device_page import device_certificates_url, device_events_url, device_sections
from .filters import ImportBatchFilter, RotationFilter
from .imports import ImportViews, batch_tokens_button

# --- Products -----------------------------------------------------------------------------------


class ProductForm(forms.ModelForm):
    """What a product asks of AWS IoT (SPEC §5.1); saved through `product_configure`, which creates what it
    names in AWS IoT first and audits the change."""

    thing_groups_text = forms.CharField(
        label="Thing groups",
        required=False,
        help_text="static thing groups its things join, separated by spaces or commas",
    )

    class Meta:
        model = Product
        fields = ["name", "description", "iot_policy", "thing_type", "rotate_after_days"]
        labels = {"iot_policy": "IoT policy", "rotate_after_days": "Rotate after (days)"}
        help_texts = {
            "iot_policy": "empty: the default policy (CVM_IOT_POLICY_NAME)",
            "thing_type": "empty: no thing type (then a device may have 1 attribute of its own, else 48)",
            "rotate_after_days": "devices are 'rotation due' after this many days; answers carry rotate_after",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["thing_groups_text"].initial = " ".join(self.instance.thing_groups)

    def clean_thing_groups_text(self) -> list[str]:
        return [group for group in self.cleaned_data["thing_groups_text"].replace(",", " ").split() if group]

    def clean_rotate_after_days(self) -> int | None:
        days = self.cleaned_data["rotate_after_days"]
        if days is not None and not 1 <= days <= 3650:
            raise forms.ValidationError("1 to 3650 days, or empty for none")
        return days


@admin.register(Product)
class ProductAdmin(PortalModelAdmin):
    form = ProductForm
    list_display = ["name", "description", "policy", "thing_type", "groups", "rotate_after_days", "updated_at"]
    search_fields = ["name"]
    search_help_text = "Product names containing the words."
    fields = ["name", "description", "iot_policy", "thing_type", "thing_groups_text", "rotate_after_days"]

    @admin.display(description="IoT policy")
    def policy(self, obj: Product) -> str:
        return obj.policy_name

    @admin.display(description="thing groups")
    def groups(self, obj: Product) -> str:
        return ", ".join(obj.thing_groups) or "-"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None):
        # The name is copied into every thing's attributes and the DynamoDB table; it does not change.
        return ["name"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Product, form: Any, change: bool) -> None:
        data = form.cleaned_data
        try:
            report = product_configure(
                name=obj.name,
                actor=actor_of(request),
                description=data["description"],
                iot_policy=data["iot_policy"],
                thing_type=data["thing_type"],
                thing_groups=data["thing_groups_text"],
                rotate_after_days=data["rotate_after_days"],
            )
        except (ServiceError, AwsError) as exc:
            # Nothing changed: AWS IoT refused or could not be reached, or the devices cannot take it.
            raise ProductNotSaved(str(exc)) from None
        obj.pk = report.product.pk
        obj.refresh_from_db()
        if report.created_in_aws:
            self.message_user(request, "Created in AWS IoT: " + ", ".join(report.created_in_aws))

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Not inside Django's transaction around the form: saving calls AWS IoT (product_configure creates
        # what the product names there first), and no AWS call runs inside a database transaction.
        try:
            return self._changeform_view(request, *args, **kwargs)
        except ProductNotSaved as exc:
            self.message_user(request, f"The product was not saved: {exc}", level="error")
            return HttpResponseRedirect(request.get_full_path())

    def log_addition(self, request: HttpRequest, obj: Any, message: Any):
        return None  # the audit log records it

    def log_change(self, request: HttpRequest, obj: Any, message: Any):
        return None


class ProductNotSaved(Exception):
    pass


# --- Devices ------------------------------------------------------------------------------------


class DeviceAddForm(forms.ModelForm):
    class Meta:
        model = Device
        fields = ["serial", "product"]

    def clean_serial(self) -> str:
        serial = self.cleaned_data["serial"].strip()
        if not SERIAL_RE.match(serial):
            raise forms.ValidationError(SERIAL_MESSAGE)
        return serial


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
class DeviceAdmin(ImportViews, DeviceActions, CsvExportMixin, BigListAdmin):
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
            *self.action_urls(),
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
