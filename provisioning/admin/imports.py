"""Serials imported from a CSV: upload, preview, confirm, and the import's progress (views of DeviceAdmin).

The upload is checked and kept on the server as an ImportBatch; its page previews it and confirms it by
its address, and the `run_imports` worker imports it (provisioning/imports.py).
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

from ..imports import import_batch_confirm, import_batch_create
from ..models import ImportState
from ..selectors import import_batch_get, import_batches_recent
from ..services import ImportInvalid, ServiceError
from ..validators import PRODUCT_NAME_MAX, validate_product_name
from .base import actor_of

# A million serials with a product column is about 25 MB; the file is kept until it is imported.
MAX_IMPORT_BYTES = 64 * 1024 * 1024


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with the header serial or serial,product")
    product = forms.CharField(
        required=False,
        max_length=PRODUCT_NAME_MAX,
        validators=[validate_product_name],
        help_text="product for rows that name none",
    )


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
        return TemplateResponse(request, "admin/provisioning/device/import.html", context)

    def import_batch_view(self, request: HttpRequest, batch_id: Any) -> HttpResponse:
        """One upload: its preview and the confirmation (which posts nothing but the batch's address),
        then the import's progress, refreshed until the worker is done."""
        if not self.has_import_devices_permission(request):
            raise PermissionDenied
        batch = import_batch_get(batch_id=batch_id)
        if batch is None:
            raise Http404("No such import.")
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
