"""Device actions behind a confirmation page: issue tokens, revoke, reset.

One helper serves them all. The page starts with what will happen ("770 devices · 490 get a token ·
280 skipped"), then the form, then the devices, each with what will happen to it or why it is skipped:
the lifecycle table (models.LIFECYCLE, through the services' checks) decides. Confirming does exactly
that: the eligible devices are done and the others reported as skipped with the reason, including a
device whose state changed since the page was shown. The confirmation posts back a one-time nonce and a
fingerprint of the selection, so a reloaded page, a double click or a selection that changed meanwhile
does nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from ..models import Device
from ..services import device_refusal
from ..validators import TOKEN_TTL_MAX_DAYS, TOKEN_TTL_MIN_DAYS

NONCES_KEY = "cvm_confirmations"
# The first rows are shown; "show all" opens the rest up to CONFIRM_LIST_ROWS. A selection of a million
# is summed up, not printed: the list itself, with the same filters, shows every device.
CONFIRM_FIRST_ROWS = 20
CONFIRM_LIST_ROWS = 1000
# Messages after an action name this many devices one by one; the rest are counted.
REPORT_ROWS = 20


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


def selection_digest(devices: list[Device]) -> str:
    """Names a selection of devices in 64 characters, so a confirmation can check it acts on what it showed."""
    return hashlib.sha256(",".join(str(pk) for pk in sorted(d.pk for d in devices)).encode()).hexdigest()


@dataclass(frozen=True)
class ConfirmedAction:
    """A device action that needs a confirmation: its words, its form and its lifecycle action."""

    title: str
    lifecycle_action: str  # a DeviceAction: the lifecycle says which devices it may act on
    will: str  # the summary's words for the devices it acts on: "get a token"
    describe: Callable[[Device], str]  # what will happen to one eligible device
    note: str
    form_class: type[forms.Form]
    dangerous: bool = False


Run = Callable[[list[Device], dict[str, str], dict[str, Any]], HttpResponse | None]


def partition(devices: list[Device], spec: ConfirmedAction) -> tuple[list[Device], dict[str, str]]:
    """The devices the action will act on, and why each of the others is skipped."""
    eligible, skipped = [], {}
    for device in devices:
        refusal = device_refusal(action=spec.lifecycle_action, device=device)
        if refusal is None:
            eligible.append(device)
        else:
            skipped[device.serial] = refusal
    return eligible, skipped


def confirmed_action(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    devices: list[Device],
    spec: ConfirmedAction,
    *,
    action: str | None,
    run: Run,
) -> HttpResponse | None:
    """The confirmation page, or, once confirmed, `run(eligible devices, skipped {serial: why}, form data)`.

    `devices` are read in this request, so at confirmation their states are those of now: a device that
    changed since the page was shown is skipped with its reason. `action` is the bulk action's name the
    form posts back to the changelist, or None on a device's own page (the form posts back there).
    """
    form = spec.form_class(request.POST if "confirm" in request.POST else None)
    if "confirm" in request.POST and form.is_valid():
        if not confirmed_once(model_admin, request, devices):
            return None
        eligible, skipped = partition(devices, spec)
        return run(eligible, skipped, form.cleaned_data)
    eligible, skipped = partition(devices, spec)
    # Skipped devices first: they are what needs a look. Each row: device, why skipped, what will happen.
    rows = [(d, skipped[d.serial], "") for d in devices if d.serial in skipped][:CONFIRM_LIST_ROWS]
    rows += [(d, "", spec.describe(d)) for d in eligible[: CONFIRM_LIST_ROWS - len(rows)]]
    select_across = request.POST.get("select_across") == "1"
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": spec.title,
        "spec": spec,
        "device_count": len(devices),
        "eligible_count": len(eligible),
        "skipped_count": len(skipped),
        "expires_on": _expiry(form),
        "first_rows": rows[:CONFIRM_FIRST_ROWS],
        "more_rows": rows[CONFIRM_FIRST_ROWS:],
        "listed_count": len(rows),
        "unlisted": len(devices) - len(rows),
        "cancel_url": _way_back(request, devices, action),
        "form": form,
        "action": action,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        # "Select all N devices" is confirmed by the list's filters (the form posts back to the same
        # address), not device by device: Django refuses a form of more than 1,000 fields.
        "select_across": select_across,
        "selected_pks": [devices[0].pk] if select_across and devices else [d.pk for d in devices],
        "list_query": request.GET.urlencode(),
        "selection": selection_digest(devices),
        "nonce": confirmation_nonce(request),
    }
    return TemplateResponse(request, "admin/provisioning/device/confirm.html", context)


def _way_back(request: HttpRequest, devices: list[Device], action: str | None) -> str:
    if action is None and devices:  # a device's own page
        return reverse("admin:provisioning_device_change", args=[devices[0].pk])
    query = request.GET.urlencode()
    return reverse("admin:provisioning_device_changelist") + (f"?{query}" if query else "")


def _expiry(form: forms.Form) -> Any:
    """The day new tokens would expire with the lifetime in the form (as typed, or its default)."""
    if "ttl_days" not in form.fields:
        return None
    value = form.data.get("ttl_days") if form.is_bound else form.fields["ttl_days"].initial
    try:
        days = int(value)
    except (TypeError, ValueError):
        return None
    if not TOKEN_TTL_MIN_DAYS <= days <= TOKEN_TTL_MAX_DAYS:
        return None
    return (timezone.now() + timedelta(days=days)).date()


def confirmed_once(model_admin: admin.ModelAdmin, request: HttpRequest, devices: list[Device]) -> bool:
    if request.POST.get("selection") != selection_digest(devices):
        # The filters now select other devices (new ones registered, states changed): what the
        # confirmation page listed is not what would be done.
        model_admin.message_user(
            request,
            "The selection changed since the confirmation page was shown; nothing was done. Select again.",
            messages.WARNING,
        )
        return False
    if confirmation_consume(request):
        return True
    model_admin.message_user(
        request, "This confirmation was already used or has expired; nothing was done again.", messages.WARNING
    )
    return False


def report(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    verb: str,
    succeeded: list[str],
    *,
    skipped: dict[str, str],
    failed: dict[str, str],
) -> None:
    """Messages for the list: what was done, each skipped device with why, each failure with what to do."""
    if succeeded:
        names = ", ".join(succeeded[:50]) + (f" and {len(succeeded) - 50} more" if len(succeeded) > 50 else "")
        model_admin.message_user(request, f"{verb.capitalize()} {len(succeeded)} device(s): {names}")
    elif not failed:
        model_admin.message_user(request, f"Nothing was {verb}.", messages.WARNING)
    for kind, reasons, level in (("skipped", skipped, messages.WARNING), (f"not {verb}", failed, messages.ERROR)):
        for serial, why in list(reasons.items())[:REPORT_ROWS]:
            model_admin.message_user(request, f"{serial}: {kind}: {why}", level)
        if len(reasons) > REPORT_ROWS:
            model_admin.message_user(request, f"… and {len(reasons) - REPORT_ROWS} more {kind}.", level)
