"""The device API: thin views that validate, call one service and map its outcome to a status."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from . import metrics
from .crypto import ValidatedCsr
from .middleware import client_address
from .serializers import (
    DetailSerializer,
    HealthSerializer,
    LegacyInputSerializer,
    VendInputSerializer,
    VendOutputSerializer,
)
from .services import VendRefused, VendResult, VendRetryLater, certificate_vend

logger = logging.getLogger(__name__)

GENERIC_REFUSAL = "invalid serial or token"
DATABASE_RETRY_AFTER = 5


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus: a database outage is a 503 and any other failure a bare JSON 500."""
    response = drf_exception_handler(exc, context)
    if response is not None:
        return response
    if isinstance(exc, DatabaseError):
        logger.error("database unavailable", exc_info=exc)
        return Response(
            {"detail": "service temporarily unavailable; retry later"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )
    logger.error("unhandled error", exc_info=exc)
    return Response({"detail": "internal error"}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)


class AddressRateThrottle(BaseThrottle):
    """At most CVM_REQUESTS_PER_ADDRESS requests a minute from one client address.

    A fixed-window counter in the shared cache: one increment per request, the same for all workers and
    instances when CACHE_URL names Redis.
    """

    window = 60

    def allow_request(self, request: Request, view: APIView) -> bool:
        now = time.time()
        key = f"cvm:rate:{client_address(request._request)}:{int(now // self.window)}"
        cache.add(key, 0, timeout=self.window * 2)
        try:
            count = cache.incr(key)
        except ValueError:  # evicted between add and incr
            cache.set(key, 1, timeout=self.window * 2)
            count = 1
        self._wait = self.window - (now % self.window)
        return count <= settings.CVM_REQUESTS_PER_ADDRESS

    def wait(self) -> float:
        return self._wait


def _retry_later(exc: VendRetryLater) -> Response:
    return Response({"detail": exc.detail}, status=exc.status, headers={"Retry-After": str(exc.retry_after)})


class CertificateVendApi(APIView):
    throttle_classes = [AddressRateThrottle]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        outcome = getattr(request._request, "cvm_outcome", None) or f"status_{response.status_code}"
        metrics.ISSUANCES.labels(outcome.split(":")[0]).inc()
        if hasattr(self, "_started"):
            metrics.VEND_SECONDS.observe(time.perf_counter() - self._started)
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        operation_id="vend_certificate",
        summary="Trade a serial and one-time token for an AWS IoT certificate",
        request=VendInputSerializer,
        responses={
            201: VendOutputSerializer,
            400: OpenApiResponse(description="malformed request: {field: [message, ...]}"),
            403: OpenApiResponse(DetailSerializer, description="invalid serial or token"),
            409: OpenApiResponse(DetailSerializer, description="another request for this device is being served"),
            413: OpenApiResponse(DetailSerializer, description="body over 64 KiB"),
            415: OpenApiResponse(DetailSerializer, description="body is not JSON"),
            429: OpenApiResponse(DetailSerializer, description="too many requests or failed tokens"),
            503: OpenApiResponse(DetailSerializer, description="AWS unavailable; nothing issued, token still valid"),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = VendInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = self.vend(request, serial=data["serial"], token=data["token"], csr=data["validated_csr"])
        if isinstance(result, Response):
            return result
        body = {
            "serial": result.serial,
            "thing_name": result.thing_name,
            "certificate_id": result.certificate_id,
            "certificate_arn": result.certificate_arn,
            "certificate_pem": result.certificate_pem,
            "iot_endpoint": result.iot_endpoint,
            "root_ca_pem": result.root_ca_pem,
        }
        if result.private_key_pem is not None:
            body["private_key_pem"] = result.private_key_pem
        return Response(body, status=status.HTTP_201_CREATED)

    @staticmethod
    def vend(request: Request, *, serial: str, token: str, csr: ValidatedCsr | None) -> VendResult | Response:
        """Call the service and turn a refusal into its answer; the caller shapes a success."""
        request._request.cvm_serial = serial
        try:
            result = certificate_vend(
                serial=serial, token=token, csr=csr, client_address=client_address(request._request)
            )
        except VendRefused as exc:
            request._request.cvm_outcome = f"refused:{exc.reason}"
            return Response({"detail": GENERIC_REFUSAL}, status=status.HTTP_403_FORBIDDEN)
        except VendRetryLater as exc:
            request._request.cvm_outcome = f"retry_later:{exc.status}"
            return _retry_later(exc)
        request._request.cvm_outcome = "issued"
        return result

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, APIException):
            self.request._request.cvm_outcome = f"rejected:{type(exc).__name__}"
        return super().handle_exception(exc)


class LegacyCertificateApi(CertificateVendApi):
    """The reference CVM's device call, for firmware that cannot change (`CVM_LEGACY_API`).

    `GET /getcert?serialNumber=…&deviceToken=…`, or the same two fields as a JSON body on POST, answered
    on success in the reference's shape. Everything else is this portal's: one-time tokens, no orphans,
    lockout, audit, and its status codes and generic bodies on failure.
    """

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if not settings.CVM_LEGACY_API:
            raise NotFound
        super().initial(request, *args, **kwargs)

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return self.legacy(request, request.query_params)

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        return self.legacy(request, request.data)

    def legacy(self, request: Request, params: Any) -> Response:
        serializer = LegacyInputSerializer(data=params)
        serializer.is_valid(raise_exception=True)
        if settings.CVM_REQUIRE_CSR:
            # The reference had AWS generate every key; this portal is set to accept device keys only.
            raise ValidationError({"detail": ["this portal requires a CSR; the legacy call cannot send one"]})
        data = serializer.validated_data
        result = self.vend(request, serial=data["serialNumber"], token=data["deviceToken"], csr=None)
        if isinstance(result, Response):
            return result
        return Response(
            {
                "certificateArn": result.certificate_arn,
                "certificateId": result.certificate_id,
                "certificatePem": result.certificate_pem,
                "keyPair": {"PublicKey": result.public_key_pem, "PrivateKey": result.private_key_pem},
                "RootCA": result.root_ca_pem,
            },
            status=status.HTTP_200_OK,
        )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: with CVM_METRICS_TOKEN as a bearer token, or from loopback without one
    (only when no proxy is trusted: behind one, the token is required)."""
    token = settings.CVM_METRICS_TOKEN
    if token:
        offered = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        allowed = hmac.compare_digest(offered.encode(), token.encode())
    elif settings.CVM_TRUSTED_PROXY_ADDRESSES:
        # Behind a proxy every request may arrive from loopback: the token is the only safe rule.
        allowed = False
    else:
        allowed = client_address(request) in ("127.0.0.1", "::1")
    if not allowed:
        return JsonResponse({"detail": "forbidden"}, status=403)
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


class HealthApi(APIView):
    @extend_schema(operation_id="health", responses={200: HealthSerializer, 503: HealthSerializer})
    def get(self, request: Request) -> Response:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError:
            return Response({"status": "unavailable"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"status": "ok"})
