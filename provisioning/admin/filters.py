"""The list filters staff work with beside Django's own: an import batch, a rotation's state, a date range.

Each consumes only its own parameters, so the declared-lookups rule (base.py) lets them through, and a
value it cannot use is a 400 that says so rather than a list silently left unfiltered.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from ..models import DeviceAction, Product, allowed_states
from ..selectors import import_batch_get, import_batches_imported


def batch_label(batch: Any) -> str:
    when = timezone.localtime(batch.uploaded_at).strftime("%Y-%m-%d %H:%M")
    created = batch.created_count if batch.created_count is not None else batch.new_count
    return f"{batch.file_name} · {when} · {created} new"


class ImportBatchFilter(admin.SimpleListFilter):
    """The devices one admin import registered ("the batch I just imported"); the latest imports to pick."""

    title = "import"
    parameter_name = "import_batch"

    def __init__(self, request: HttpRequest, params: dict, model: Any, model_admin: Any) -> None:
        value = params.get(self.parameter_name, [None])[-1]
        self.batch = None
        if value is not None:
            try:
                self.batch = import_batch_get(batch_id=uuid.UUID(value))
            except ValueError:
                raise IncorrectLookupParameters(f"{value[:40]!r} does not name an import") from None
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        batches = import_batches_imported()
        if self.batch is not None and self.batch.pk not in {b.pk for b in batches}:
            batches.insert(0, self.batch)
        return [(str(batch.pk), batch_label(batch)) for batch in batches]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        return queryset.filter(import_batch_id=uuid.UUID(self.value()))


class RotationFilter(admin.SimpleListFilter):
    """Devices in the middle of a rotation, and those whose certificate is due for one.

    "Due" exists when a product sets `rotate_after_days` or CVM_ROTATE_AFTER_DAYS is set: a certificate
    issued more than that many days ago (the product's own age first, the setting for the others). Both
    conditions run on indexes (the pending certificate's and the certificate's issue time).
    """

    title = "rotation"
    parameter_name = "rotation"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = [("pending", "in progress (awaiting confirmation)")]
        if settings.CVM_ROTATE_AFTER_DAYS or Product.objects.exclude(rotate_after_days=None).exists():
            choices.append(("due", "due (certificate older than its product's rotation age)"))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        if value not in {choice for choice, _ in self.lookup_choices}:
            raise IncorrectLookupParameters(f"rotation={value[:40]!r}: this list offers no such choice")
        if value == "pending":
            return queryset.filter(pending_certificate__isnull=False)
        now = timezone.now()
        ages = dict(Product.objects.exclude(rotate_after_days=None).values_list("pk", "rotate_after_days"))
        due = Q(pk__in=[])
        for product_id, days in ages.items():
            due |= Q(product_id=product_id, current_certificate__issued_at__lt=now - timedelta(days=days))
        if settings.CVM_ROTATE_AFTER_DAYS:
            issued_before = now - timedelta(days=settings.CVM_ROTATE_AFTER_DAYS)
            due |= Q(current_certificate__issued_at__lt=issued_before) & ~Q(product_id__in=list(ages))
        return queryset.filter(due, state__in=allowed_states(DeviceAction.ROTATE))

    def has_output(self) -> bool:
        # Shown even with one choice; and a value it does not offer still reaches queryset() to be refused.
        return True


class DateRangeFilter(admin.FieldListFilter):
    """From one day to another, both included, in the portal's time zone; plus the usual quick ranges.

    `?<field>__from=2026-11-01&<field>__to=2026-11-30`: the form in the filter column sets them.
    """

    template = "admin/date_range_filter.html"

    def __init__(self, field: Any, request: HttpRequest, params: dict, model: Any, model_admin: Any, field_path: str):
        self.from_kwarg = f"{field_path}__from"
        self.to_kwarg = f"{field_path}__to"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = getattr(field, "verbose_name", field_path)
        self.dates = {}
        for kwarg in (self.from_kwarg, self.to_kwarg):
            values = self.used_parameters.get(kwarg) or [""]
            raw = values[-1] if isinstance(values, list) else values
            if raw:  # the form sends an empty field for an open end
                try:
                    self.dates[kwarg] = date.fromisoformat(raw)
                except ValueError:
                    raise IncorrectLookupParameters(f"{kwarg}: {raw[:40]!r} is not a date (YYYY-MM-DD)") from None

    def expected_parameters(self) -> list[str]:
        return [self.from_kwarg, self.to_kwarg]

    @property
    def active_display(self) -> str:
        start, end = self.dates.get(self.from_kwarg), self.dates.get(self.to_kwarg)
        if start and end:
            return start.isoformat() if start == end else f"{start.isoformat()} to {end.isoformat()}"
        return f"from {start.isoformat()}" if start else f"to {end.isoformat()}"

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        zone = timezone.get_current_timezone()
        if self.from_kwarg in self.dates:
            start = datetime.combine(self.dates[self.from_kwarg], time.min, tzinfo=zone)
            queryset = queryset.filter(**{f"{self.field_path}__gte": start})
        if self.to_kwarg in self.dates:
            end = datetime.combine(self.dates[self.to_kwarg] + timedelta(days=1), time.min, tzinfo=zone)
            queryset = queryset.filter(**{f"{self.field_path}__lt": end})
        return queryset

    def quick_ranges(self) -> list[tuple[str, date | None, date | None]]:
        today = timezone.localdate()
        return [
            ("Any date", None, None),
            ("Today", today, today),
            ("Past 7 days", today - timedelta(days=6), today),
            ("This month", today.replace(day=1), today),
            ("This year", today.replace(month=1, day=1), today),
        ]

    def choices(self, changelist: ChangeList) -> Iterator[dict[str, Any]]:
        self.form = self.form_context(changelist)  # the template's from/to form
        current = (self.dates.get(self.from_kwarg), self.dates.get(self.to_kwarg))
        for label, start, end in self.quick_ranges():
            params = {
                **({self.from_kwarg: start.isoformat()} if start else {}),
                **({self.to_kwarg: end.isoformat()} if end else {}),
            }
            yield {
                "selected": current == (start, end),
                "query_string": changelist.get_query_string(params, [self.from_kwarg, self.to_kwarg, "p"]),
                "display": label,
            }

    def form_context(self, changelist: ChangeList) -> dict[str, Any]:
        """What the filter's from/to form needs: its fields' values and the list's other parameters."""
        start, end = self.dates.get(self.from_kwarg), self.dates.get(self.to_kwarg)
        return {
            "from_name": self.from_kwarg,
            "to_name": self.to_kwarg,
            "from_value": start.isoformat() if start else "",
            "to_value": end.isoformat() if end else "",
            "keep": [(k, v) for k, v in changelist.params.items() if k not in (self.from_kwarg, self.to_kwarg)],
        }
