"""Device actions behind a confirmation page: issue tokens, revoke, reset.

One helper serves them all. The first request shows what will happen to each selected device, as the
lifecycle table (models.LIFECYCLE) says its state allows; the confirmation posts back with a one-time
nonce and a fingerprint of the selection, so a reloaded page, a double click or a selection that changed
meanwhile does nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from ..models import Device

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


def selection_digest(devices: list[Device]) -> str:
    """Names a selection of devices in 64 characters, so a confirmation can check it acts on what it showed."""
    return hashlib.sha256(",".join(str(pk) for pk in sorted(d.pk for d in devices)).encode()).hexdigest()


@dataclass(frozen=True)
class ConfirmedAction:
    """A device action that needs a confirmation: its words, its form and its lifecycle action."""

    title: str
    warning: str
    lifecycle_action: str  # a DeviceAction: which devices the lifecycle lets it act on
    blocked_note: str  # what the confirmation page says of a device it will skip
    form_class: type[forms.Form]


def confirmed_action(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    devices: list[Device],
    spec: ConfirmedAction,
    *,
    action: str | None,
    run: Callable[[list[Device], dict[str, Any]], HttpResponse | None],
) -> HttpResponse | None:
    """The confirmation page, or, once confirmed, `run(devices, cleaned form data)`.

    `action` is the bulk action's name the form posts back to the changelist, or None on a device's
    own page (the form then posts back to that page).
    """
    form = spec.form_class(request.POST if "confirm" in request.POST else None)
    if "confirm" in request.POST and form.is_valid():
        if not confirmed_once(model_admin, request, devices):
            return None
        return run(devices, form.cleaned_data)
    blocked = [d for d in devices if not d.allows(spec.lifecycle_action)]
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": spec.title,
        "devices": devices[:CONFIRM_LIST_ROWS],
        "device_count": len(devices),
        "blocked": {d.serial for d in blocked},
        "blocked_count": len(blocked),
        "blocked_note": spec.blocked_note,
        "warning": spec.warning,
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
    model_admin: admin.ModelAdmin, request: HttpRequest, verb: str, succeeded: list[str], failed: dict[str, str]
) -> None:
    if succeeded:
        model_admin.message_user(
            request, f"{verb.capitalize()} {len(succeeded)} device(s): {', '.join(succeeded[:50])}"
        )
    for serial, why in failed.items():
        model_admin.message_user(request, f"{serial}: not {verb}: {why}", messages.ERROR)
