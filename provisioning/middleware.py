"""Request log, body limit and cache headers for the device API."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers

from . import metrics

logger = logging.getLogger("provisioning.requests")

REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")


def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _trusted_proxy(address: str | None) -> bool:
    if address is None:
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in settings.CVM_TRUSTED_PROXY_ADDRESSES)


FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_FORWARDED")


class ProxyHeadersMiddleware:
    """Drop forwarded headers unless the connection comes from a configured proxy.

    Django trusts X-Forwarded-Proto (SECURE_PROXY_SSL_HEADER) from anyone, and per-address limits and the
    admin lockout read X-Forwarded-For; a client that reaches the portal directly must not be able to
    choose either.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not _trusted_proxy(_valid_ip(request.META.get("REMOTE_ADDR", ""))):
            for header in FORWARDED_HEADERS:
                request.META.pop(header, None)
        return self.get_response(request)


def client_address(request: HttpRequest) -> str | None:
    """The caller's address: the connecting address, or, when that is a trusted proxy, the address the
    proxies saw.

    Each proxy appends the address it saw to X-Forwarded-For. Walking from the right, an entry is the
    client once it is not itself a trusted proxy, or after CVM_TRUSTED_PROXIES hops
    (when set); anything further left was written by the client and may be forged.
    """
    address = _valid_ip(request.META.get("REMOTE_ADDR", ""))
    if not _trusted_proxy(address):
        return address
    forwarded = [part for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    hops = settings.CVM_TRUSTED_PROXIES or len(forwarded)
    for _ in range(hops):
        if not forwarded or not _trusted_proxy(address):
            break
        seen = _valid_ip(forwarded.pop())
        if seen is None:
            break
        address = seen
    return address


# The device calls counted in cvm_vend_requests_total and timed in cvm_vend_duration_seconds.
METERED_PATHS = frozenset(
    {"/api/v1/certificates", "/api/v1/certificates/rotate", "/api/v1/certificates/rotate/confirm", "/getcert"}
)


class RequestLogMiddleware:
    """One JSON line per request: id, method, path (never the query string), status, duration."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        offered = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = offered if REQUEST_ID_RE.match(offered) else uuid.uuid4().hex
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        if request.path in METERED_PATHS:
            outcome = getattr(request, "cvm_outcome", None) or f"status_{response.status_code}"
            metrics.ISSUANCES.labels(outcome.split(":")[0]).inc()
            metrics.VEND_SECONDS.observe(time.perf_counter() - started)
        logger.info(
            "request",
            extra={
                "request_id": request.request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client_address(request),
                "serial": getattr(request, "cvm_serial", None),
                "outcome": getattr(request, "cvm_outcome", None),
            },
        )
        return response


DEVICE_PATHS = ("/api/", "/getcert")


class ApiGuardMiddleware:
    """For device paths: refuse bodies over the limit before anything reads them, and forbid caching."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(DEVICE_PATHS):
            return self.get_response(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.CVM_MAX_BODY_BYTES:
            request.cvm_outcome = "body_too_large"
            response: HttpResponse = JsonResponse(
                {"detail": f"request body is larger than {settings.CVM_MAX_BODY_BYTES} bytes"}, status=413
            )
        else:
            response = self.get_response(request)
        add_never_cache_headers(response)
        return response
