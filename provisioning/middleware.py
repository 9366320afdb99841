"""Request log, request charset, body limit, cache headers, JSON errors and the early lockout answer for the
device API."""

from __future__ import annotations

import codecs
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.http import parse_header_parameters
from rest_framework.renderers import JSONRenderer

from . import metrics
from .services.vending import VendRetryLater, address_lockout_check

logger = logging.getLogger("provisioning.requests")

REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")


def _valid_ip(value: str) -> str | None:
    """The address in `value` in one canonical form, or None when it names none.

    Proxies write addresses in more than one spelling, and each spelling must count as the same caller:
    a port is dropped (`1.2.3.4:5555`, `[2001:db8::1]:443`, as some load balancers append it), an IPv6
    zone (`fe80::1%eth0`, which PostgreSQL's inet refuses) is dropped, and an IPv4-mapped IPv6 address
    (`::ffff:1.2.3.4`) is the IPv4 address it maps.
    """
    text = value.strip()
    if text.startswith("[") and "]" in text:  # [v6] or [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port; an IPv6 address has at least two colons
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


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

    Worked out once per request and kept on it: the log, the limits, the lockout and the service all ask.
    """
    try:
        return request._cvm_client_address  # type: ignore[attr-defined]
    except AttributeError:
        address = request._cvm_client_address = _client_address(request)  # type: ignore[attr-defined]
        return address


def _client_address(request: HttpRequest) -> str | None:
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
                "api_key": getattr(request, "cvm_api_key", None),
            },
        )
        return response


DEVICE_PATHS = ("/api/", "/getcert")


def is_device_path(path: str) -> bool:
    """Paths that machines call: every answer there is JSON."""
    return path == "/api" or path.startswith(DEVICE_PATHS)


def _is_json(response: HttpResponse) -> bool:
    media_type = response.get("Content-Type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def json_error(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """The same status as `response`, with a JSON body instead of Django's HTML page.

    Django answers an unknown path, a 405 from a plain view or an error raised outside DRF with an HTML
    page (with DEBUG on, one that lists every URL pattern or a traceback); a device parses JSON only.
    """
    status = response.status_code
    if status == 404:
        detail = "not found"
    elif status == 405:
        detail = f"method {request.method} not allowed"
    elif status >= 500:
        detail = "internal error"
    else:
        detail = response.reason_phrase.lower()
    replacement = JsonResponse({"detail": detail}, status=status)
    for header in ("Allow", "Retry-After", "Vary"):
        if header in response:
            replacement[header] = response[header]
    return replacement


# The charsets a request may declare for its body (names as `codecs.lookup` spells them): UTF-8 and
# the single-byte ASCII supersets (ISO 8859, Windows code pages). In each, every ASCII byte stands for
# its ASCII character wherever it appears, so the form and multipart parsers, which find '&', '=' and
# boundaries as bytes before decoding, read what the sender meant. Python's codec registry also holds
# bytes-to-bytes codecs (bz2, zlib, hex), str-to-str ones (rot13) and encodings that are not ASCII
# supersets (UTF-16, UTF-7, EBCDIC); Django would try to decode with them and fail with a 500.
ACCEPTED_CHARSETS = frozenset(
    {
        "utf-8",
        "ascii",
        *(f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)),
        *(f"cp{n}" for n in range(1250, 1259)),
    }
)


def charset_accepted(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name in ACCEPTED_CHARSETS
    except (LookupError, ValueError):  # unknown, or not even a name (a NUL in it)
        return False


class PortalRequest(WSGIRequest):
    """Django's request, built whatever its Content-Type header says.

    Django reads the header while it builds the request, before any middleware runs, and fails there
    with a 500: on an RFC 2231 parameter in an unknown charset (`charset*=x''y`) or a NUL in the name
    (ValueError), and on a charset that is not text when the URL has a query string (setting the
    encoding decodes the query string at once). Here the request is built without the charset and
    marked; RequestCharsetMiddleware then refuses it with a 400.
    """

    def _set_content_type_params(self, meta: dict) -> None:
        try:
            self.content_type, self.content_params = parse_header_parameters(meta.get("CONTENT_TYPE", ""))
        except ValueError:
            self.content_type, self.content_params = "", {}
            self.cvm_content_type_unreadable = True
            return
        charset = self.content_params.get("charset")
        if charset is not None and charset_accepted(charset):
            self.encoding = charset


def _content_charset(request: HttpRequest) -> tuple[bool, str | None]:
    """(readable, charset) of the request's Content-Type header, parsed as Django parses it."""
    if getattr(request, "cvm_content_type_unreadable", False):
        return False, None
    try:
        _, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    except ValueError:
        return False, None
    return True, params.get("charset")


class RequestCharsetMiddleware:
    """Refuse, before anything reads the body or query string, a request whose charset is not text.

    Runs on every path and method: the charset also decides how Django decodes the query string.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        readable, charset = _content_charset(request)
        if readable and (charset is None or charset_accepted(charset)):
            return self.get_response(request)
        request.cvm_outcome = "unsupported_charset"
        detail = "unsupported charset in the Content-Type header; send UTF-8"
        if is_device_path(request.path):
            response: HttpResponse = JsonResponse({"detail": detail}, status=400)
            add_never_cache_headers(response)
            return response
        return HttpResponseBadRequest(detail + "\n", content_type="text/plain; charset=utf-8")


# The staff API's bulk calls take up to 100,000 entries; every other path, the device calls included,
# keeps CVM_MAX_BODY_BYTES. Nothing reads a body before the key is checked, so a caller without a key
# cannot make the portal parse a large one.
BULK_PATHS = frozenset({"/api/v1/devices", "/api/v1/tokens"})


def body_limit(path: str) -> int:
    return settings.CVM_API_BULK_MAX_BODY_BYTES if path in BULK_PATHS else settings.CVM_MAX_BODY_BYTES


class ApiGuardMiddleware:
    """For device paths: refuse bodies over the limit before anything reads them, forbid caching, and
    make sure every error is JSON, whichever layer produced it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_device_path(request.path):
            return self.get_response(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = body_limit(request.path)
        if length > limit:
            request.cvm_outcome = "body_too_large"
            response: HttpResponse = JsonResponse({"detail": f"request body is larger than {limit} bytes"}, status=413)
        else:
            response = self.get_response(request)
        # Successful non-JSON answers are the OpenAPI document and its browsable page, on purpose.
        if response.status_code >= 400 and not _is_json(response):
            response = json_error(request, response)
        add_never_cache_headers(response)
        return response


def retry_later_answer(exc: VendRetryLater) -> tuple[dict[str, str], dict[str, str]]:
    """The body and headers of a "retry later" answer (409, 429, 503), whoever gives it: the views'
    exception handler or `AddressLockoutMiddleware`."""
    return {"detail": exc.detail}, {"Retry-After": str(exc.retry_after)}


# The device calls whose services refuse a locked-out address before anything else: (path, method).
LOCKOUT_CALLS = frozenset(
    {
        ("/api/v1/certificates", "POST"),
        ("/api/v1/certificates/rotate", "POST"),
        ("/api/v1/certificates/rotate/confirm", "POST"),
        ("/getcert", "GET"),
        ("/getcert", "POST"),
    }
)


class AddressLockoutMiddleware:
    """Answer a device call from a locked-out address with its 429 before DRF, throttles or the body
    parser see it.

    The lockout is the cache entry the vend and rotate services keep once an address is over
    CVM_FAILED_TOKENS_PER_ADDRESS, and the check is theirs (`address_lockout_check`), so the answer is
    the one they give; they still read the entry themselves, for an address locked in the meantime.
    Here a flood from a locked address costs one cache read per request, and no database work.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        call = (request.path_info, request.method)
        if call in LOCKOUT_CALLS and (settings.CVM_LEGACY_API or call[0] != "/getcert"):
            try:
                address_lockout_check(client_address(request), timezone.now())
            except VendRetryLater as exc:
                request.cvm_outcome = f"retry_later:{exc.status}"
                body, headers = retry_later_answer(exc)
                content = JSONRenderer().render(body)
                response = HttpResponse(content, status=exc.status, content_type="application/json")
                # As CommonMiddleware gives every other answer: without it, gunicorn sends the body chunked.
                response["Content-Length"] = str(len(content))
                for name, value in headers.items():
                    response[name] = value
                return response
        return self.get_response(request)
