"""The device API: thin views that validate, call one service and answer with its output serializer.

Domain errors become answers in one place, `exception_handler`: a refused token or proof is the one
identical 403, a request to retry later is its status with `Retry-After`, a database outage is a 503.
Request metrics are counted by the request-log middleware from the outcome a view or the handler notes.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
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

from . import aws, metrics
from .cache import window_increment
from .middleware import client_address, retry_later_answer
from .readiness import readiness_check
from .serializers import (
    ConfirmInputSerializer,
    ConfirmOutputSerializer,
    DetailSerializer,
    HealthSerializer,
    LegacyInputSerializer,
    ReadySerializer,
    RotateInputSerializer,
    RotateOutputSerializer,
    VendInputSerializer,
    VendOutputSerializer,
)
from .services import ServiceError, VendRefused, VendRetryLater, aws_failure_advice, certificate_vend
from .services.rotation import ProofRefused, RotationInvalid, certificate_rotate, rotation_confirm

logger = logging.getLogger(__name__)

GENERIC_REFUSAL = "invalid serial or token"
GENERIC_PROOF_REFUSAL = "invalid serial or proof"
DATABASE_RETRY_AFTER = 5


def _note(context: dict[str, Any], outcome: str) -> None:
    request = context.get("request")
    if request is not None:
        request._request.cvm_outcome = outcome


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every domain error of the device and staff APIs mapped to its answer; DRF's own errors as DRF shapes
    them."""
    if isinstance(exc, VendRefused):
        _note(context, f"refused:{exc.reason}")
        return Response({"detail": GENERIC_REFUSAL}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, ProofRefused):
        _note(context, f"refused:{exc.reason}")
        return Response({"detail": GENERIC_PROOF_REFUSAL}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, VendRetryLater):
        _note(context, f"retry_later:{exc.status}")
        body, headers = retry_later_answer(exc)
        return Response(body, status=exc.status, headers=headers)
    if isinstance(exc, RotationInvalid):
        _note(context, "rejected:csr")
        return Response({"csr": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, aws.AwsError):
        # Staff calls that reach AWS (revoke, reset): nothing was done, or only what a retry repeats.
        _note(context, f"retry_later:{exc.code}")
        return Response(
            {"detail": aws_failure_advice(exc)},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, ServiceError):
        # A staff request the fleet's state does not allow now (a device that is not active, …).
        _note(context, "refused:state")
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    response = drf_exception_handler(exc, context)
    if response is not None:
        if isinstance(exc, APIException):
            _note(context, f"rejected:{type(exc).__name__}")
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "request body is too large"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, DatabaseError):
        logger.error("database unavailable", exc_info=exc)
        return Response(
            {"detail": "service temporarily unavailable; retry later"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )
    logger.error("unhandled error", exc_info=exc)
    return Response({"detail": "internal error"}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)


class FixedWindowThrottle(BaseThrottle):
    """At most `limit()` requests a minute per `ident()`.

    A fixed-window counter in the shared cache: one increment per request, the same for all workers and
    instances when CACHE_URL names Redis.
    """

    window = 60
    scope = ""

    def ident(self, request: Request) -> str:
        raise NotImplementedError

    def limit(self) -> int:
        raise NotImplementedError

    def allow_request(self, request: Request, view: APIView) -> bool:
        now = time.time()
        key = f"cvm:rate:{self.scope}{self.ident(request)}:{int(now // self.window)}"
        # One round trip on Redis: every request pays it, a flood's included.
        count = window_increment(key, self.window * 2)
        self._wait = self.window - (now % self.window)
        return count <= self.limit()

    def wait(self) -> float:
        return self._wait


class AddressRateThrottle(FixedWindowThrottle):
    """At most CVM_REQUESTS_PER_ADDRESS requests a minute from one client address."""

    def ident(self, request: Request) -> str:
        return str(client_address(request._request))

    def limit(self) -> int:
        return settings.CVM_REQUESTS_PER_ADDRESS


RETRY_ANSWERS = {
    409: OpenApiResponse(DetailSerializer, description="another request for this device is being served"),
    413: OpenApiResponse(DetailSerializer, description="body over 64 KiB"),
    415: OpenApiResponse(DetailSerializer, description="body is not JSON"),
    429: OpenApiResponse(DetailSerializer, description="too many requests, failed tokens or failed proofs"),
    503: OpenApiResponse(DetailSerializer, description="AWS unavailable; nothing issued, retry later"),
}


class DeviceApi(APIView):
    """What every device call shares: the per-address request limit and the serial noted for the log."""

    throttle_classes = [AddressRateThrottle]

    @staticmethod
    def served(request: Request, serial: str) -> str | None:
        request._request.cvm_serial = serial
        return client_address(request._request)


class CertificateVendApi(DeviceApi):
    @extend_schema(
        operation_id="vend_certificate",
        summary="Trade a serial and one-time token for an AWS IoT certificate",
        request=VendInputSerializer,
        responses={
            201: VendOutputSerializer,
            200: OpenApiResponse(VendOutputSerializer, description="a lost answer fetched again (SPEC §3.1)"),
            400: OpenApiResponse(description="malformed request: {field: [message, ...]}"),
            403: OpenApiResponse(DetailSerializer, description="invalid serial or token"),
            **RETRY_ANSWERS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = VendInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = certificate_vend(
            serial=data["serial"],
            token=data["token"],
            csr=data["validated_csr"],
            client_address=self.served(request, data["serial"]),
        )
        request._request.cvm_outcome = "replayed" if result.replayed else "issued"
        return Response(
            VendOutputSerializer(result).data,
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )


class CertificateRotateApi(DeviceApi):
    @extend_schema(
        operation_id="rotate_certificate",
        summary="Trade the current certificate for one on a new key, proving possession of the current key",
        request=RotateInputSerializer,
        responses={
            201: RotateOutputSerializer,
            200: OpenApiResponse(RotateOutputSerializer, description="the pending rotation's answer, again"),
            400: OpenApiResponse(description="malformed request, or a CSR for the current key"),
            403: OpenApiResponse(DetailSerializer, description="invalid serial or proof"),
            **RETRY_ANSWERS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = RotateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = certificate_rotate(
            serial=data["serial"],
            csr=data["validated_csr"],
            proof=data["proof"],
            client_address=self.served(request, data["serial"]),
        )
        replayed = result.certificate.replayed
        request._request.cvm_outcome = "rotation_replayed" if replayed else "rotation_issued"
        return Response(
            RotateOutputSerializer(result).data, status=status.HTTP_200_OK if replayed else status.HTTP_201_CREATED
        )


class CertificateRotateConfirmApi(DeviceApi):
    @extend_schema(
        operation_id="confirm_rotation",
        summary="Make the rotated certificate current, proving possession of its key; the old one is revoked",
        request=ConfirmInputSerializer,
        responses={
            200: ConfirmOutputSerializer,
            400: OpenApiResponse(description="malformed request"),
            403: OpenApiResponse(DetailSerializer, description="invalid serial or proof"),
            **RETRY_ANSWERS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = ConfirmInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = rotation_confirm(
            serial=data["serial"], proof=data["proof"], client_address=self.served(request, data["serial"])
        )
        request._request.cvm_outcome = "rotation_confirmed"
        return Response(ConfirmOutputSerializer(result).data)


class LegacyCertificateApi(DeviceApi):
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
        result = certificate_vend(
            serial=data["serialNumber"],
            token=data["deviceToken"],
            csr=None,
            client_address=self.served(request, data["serialNumber"]),
        )
        request._request.cvm_outcome = "issued"
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


class ReadyApi(APIView):
    """Readiness: 200 when the database, the cache and AWS IoT answer in time, else 503 naming each that did
    not (provisioning/readiness.py)."""

    @extend_schema(operation_id="ready", responses={200: ReadySerializer, 503: ReadySerializer})
    def get(self, request: Request) -> Response:
        checks = readiness_check()
        failed = [part for part, result in checks.items() if result != "ok"]
        body = {"status": "unavailable" if failed else "ok", "failed": failed, "checks": checks}
        return Response(
            ReadySerializer(body).data,
            status=status.HTTP_503_SERVICE_UNAVAILABLE if failed else status.HTTP_200_OK,
        )
