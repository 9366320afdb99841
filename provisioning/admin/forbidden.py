"""A page the role may not open, in the admin's own layout with a way back, never a bare "403 Forbidden".

Django answers a PermissionDenied, and a form whose CSRF token failed, with a plain page that has no
header, no navigation and no link; staff then have only the browser's back button. Outside the admin
(the device API, whose errors are JSON) Django's own handlers answer as before.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views import defaults
from django.views.csrf import csrf_failure as django_csrf_failure


def _in_admin(request: HttpRequest) -> bool:
    return request.path.startswith(reverse("admin:index"))


def way_back(request: HttpRequest) -> str:
    """The admin page the user came from (same site, another page), else the admin's home."""
    referer = urlsplit(request.headers.get("Referer", ""))
    home = reverse("admin:index")
    if referer.netloc == request.get_host() and referer.path.startswith(home) and referer.path != request.path:
        return referer.path + (f"?{referer.query}" if referer.query else "")
    return home


def _page(request: HttpRequest, *, title: str, reason: str) -> HttpResponse:
    user = request.user
    roles = ", ".join(user.groups.values_list("name", flat=True)) if user.is_authenticated else ""
    context = {
        **admin.site.each_context(request),
        "title": title,
        "reason": reason,
        "roles": roles,
        "way_back": way_back(request),
    }
    return render(request, "admin/403.html", context, status=403)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _in_admin(request):
        return defaults.permission_denied(request, exception)
    return _page(
        request,
        title="Not open to your role",
        reason="This page or action is not part of your role's work, so the portal does not open it. "
        "If you need it, ask a colleague in the role that does it, or an administrator.",
    )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if not _in_admin(request):
        return django_csrf_failure(request, reason)
    return _page(
        request,
        title="This form has expired",
        reason="The form was sent without a valid security token: it was open too long, was sent from "
        "another site, or the browser blocks cookies. Nothing was done. Go back, reload the page and "
        "try again.",
    )
