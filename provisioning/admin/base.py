"""What every list of the staff portal shares.

A list's URL accepts only its declared filters, search, ordering and paging (Django would apply anything
else as a lookup); big tables are never counted in full; history is read-only for everyone; and an
"Export CSV" link exports exactly the filtered list.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.exceptions import DisallowedModelAdminLookup, DisallowedModelAdminToField
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.widgets import url_params_from_lookup_dict
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.functional import cached_property


def actor_of(request: HttpRequest) -> str:
    return f"staff:{request.user.get_username()}"


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
    """The portal's own admins: a change page's History button leads where the role may follow it."""

    def history_url(self, request: HttpRequest, obj: Any) -> str:
        info = self.opts.app_label, self.opts.model_name
        return reverse(f"admin:{info[0]}_{info[1]}_history", args=[quote(obj.pk)])

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], add=False, change=False, form_url="", obj=None
    ) -> HttpResponse:
        context["history_url"] = self.history_url(request, obj) if obj is not None else ""
        return super().render_change_form(request, context, add, change, form_url, obj)


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
