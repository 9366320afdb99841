"""Serials imported from a CSV: upload, preview, confirm, progress, and back to "the batch I just imported".

The upload is checked and kept on the server as an ImportBatch; its page previews it (summary and the
Import button first, then what deserves a second look: products the import would create, rows that name
no product, serials already known) and confirms it by its address. The `run_imports` worker imports it
(provisioning/imports.py); the page then takes the user to the device list filtered to exactly the
devices this import registered, where tokens for them are one click away.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.http import urlencode

from ..imports import import_batch_confirm, import_batch_create, import_batch_repreview
from ..models import DeviceState, ImportState
from ..selectors import import_batch_devices, import_batch_get, import_batches_recent, product_names
from ..services import DEFAULT_PRODUCT, ImportInvalid, ServiceError
from ..validators import PRODUCT_NAME_MAX, validate_product_name
from .base import actor_of

# A million serials with a product column is about 25 MB; the file is kept until it is imported.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
# The batch page takes the user on to the device list once the import is done.
FOLLOW = "then"


class ProductField(forms.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            required=False,
            max_length=PRODUCT_NAME_MAX,
            validators=[validate_product_name],
            # The page lists the existing products in <datalist id="existing-products">: pick one, or type
            # a new name (the preview then warns that the import creates it).
            widget=forms.TextInput(attrs={"list": "existing-products", "autocomplete": "off"}),
            **kwargs,
        )


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with the header serial or serial,product")
    product = ProductField(help_text=f"product for rows that name none; empty means “{DEFAULT_PRODUCT}”")


class RepreviewForm(forms.Form):
    product = ProductField(label="Rows without a product go to")


def batch_devices_url(batch_id: Any, **filters: str) -> str:
    return reverse("admin:provisioning_device_changelist") + "?" + urlencode({"import_batch": batch_id, **filters})


def batch_tokens_button(request: HttpRequest, batch_id: Any) -> dict[str, Any] | None:
    """The "Issue tokens for these N" form: the list's own action over the batch's devices without a
    token, confirmed on the usual confirmation page. None when the role may not or there are none."""
    if not request.user.has_perm("provisioning.issue_token"):
        return None
    devices = import_batch_devices(batch_id=batch_id)
    if not devices.registered:
        return None
    return {
        "count": devices.registered,
        "url": batch_devices_url(batch_id, state__exact=DeviceState.REGISTERED),
        "pk": devices.first_registered_pk,
    }


class ImportViews:
    """The import pages of the device admin; only roles with the import permission open them."""

    def import_urls(self) -> list[Any]:
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="provisioning_device_import"),
            path(
                "import/<uuid:batch_id>/",
                self.admin_site.admin_view(self.import_batch_view),
                name="provisioning_device_import_batch",
            ),
        ]

    def has_import_devices_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("provisioning.import_devices")

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
        context["recent"] = import_batches_recent()
        context["products"] = product_names()
        return TemplateResponse(request, "admin/provisioning/device/import.html", context)

    def import_batch_view(self, request: HttpRequest, batch_id: Any) -> HttpResponse:
        """One upload: its preview and the confirmation (which posts nothing but the batch's address),
        then the import's progress, refreshed until the worker is done, then its devices."""
        if not self.has_import_devices_permission(request):
            raise PermissionDenied
        batch = import_batch_get(batch_id=batch_id)
        if batch is None:
            raise Http404("No such import.")
        repreview = RepreviewForm(request.POST if "repreview" in request.POST else None)
        if request.method == "POST" and "confirm" in request.POST:
            if import_batch_confirm(batch_id=batch.pk, actor=actor_of(request)):
                self.message_user(request, f"Import of {batch.new_count} new serial(s) queued.", messages.SUCCESS)
                return HttpResponseRedirect(f"{request.path}?{FOLLOW}=devices")
            already = "This import was already confirmed or has expired; nothing was done again."
            self.message_user(request, already, messages.WARNING)
            return HttpResponseRedirect(request.path)
        if request.method == "POST" and repreview.is_valid():
            again = import_batch_repreview(
                batch_id=batch.pk, default_product=repreview.cleaned_data["product"] or None, actor=actor_of(request)
            )
            if again is None:
                self.message_user(request, "This upload was already confirmed or has expired.", messages.WARNING)
                return HttpResponseRedirect(request.path)
            return HttpResponseRedirect(reverse("admin:provisioning_device_import_batch", args=[again.pk]))
        if batch.state == ImportState.IMPORTED and request.GET.get(FOLLOW) == "devices":
            self.message_user(
                request,
                f"Imported {batch.created_count} new serial(s) from {batch.file_name}; "
                f"{batch.already_known_count} already known. These are the devices of this import.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(batch_devices_url(batch.pk))
        return self._batch_page(request, batch, repreview)

    def _batch_page(self, request: HttpRequest, batch: Any, repreview: RepreviewForm) -> HttpResponse:
        now = timezone.now()

        def seconds_since(moment: Any) -> int | None:
            return None if moment is None else max(0, round(((batch.finished_at or now) - moment).total_seconds()))

        imported = batch.state == ImportState.IMPORTED
        if not repreview.is_bound:
            repreview = RepreviewForm(initial={"product": batch.default_product})
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
            "new_products": [(name, rows) for name, rows, new in batch.products if new],
            "default_product": batch.default_product or DEFAULT_PRODUCT,
            "repreview": repreview,
            "products": product_names(),
            "devices_url": batch_devices_url(batch.pk) if imported else "",
            "tokens_button": batch_tokens_button(request, batch.pk) if imported else None,
        }
        response = TemplateResponse(request, "admin/provisioning/device/import_batch.html", context)
        add_never_cache_headers(response)
        return response
