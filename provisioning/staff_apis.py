"""The staff API (SPEC §9): factory lines register serials and fetch tokens, security tooling revokes,
resets and reads the audit log.

Thin views over the services the admin and the commands use: each validates, calls one service or
selector and answers with its output serializer; every change is audited with the actor
`api-key:<NAME>`; domain errors become answers in `apis.exception_handler`. Lists use cursor pagination
on a unique, unchanging column (serial, seq), so a page never repeats or skips a row while others are
added.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.http import QueryDict
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .apikeys import ApiKeyAuthentication, ApiKeyRateThrottle, RolePermission
from .selectors import audit_events_list, device_get, device_with_certificates, devices_list, serials_unknown
from .serializers import (
    AuditEventOutputSerializer,
    AuditFilterSerializer,
    DetailSerializer,
    DeviceDetailOutputSerializer,
    DeviceFilterSerializer,
    DeviceOutputSerializer,
    DeviceRegisterInputSerializer,
    DeviceRegisterOutputSerializer,
    ResetInputSerializer,
    ResetOutputSerializer,
    RevokeInputSerializer,
    TokensInputSerializer,
    TokensOutputSerializer,
)
from .services import device_reset, device_revoke, devices_import, tokens_issue

UNKNOWN_SERIAL = "unknown serial"


class StaffPagination(CursorPagination):
    """`{"results": [...], "next": URL or null}`; `page_size` 1 to 1000 (default 100)."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    invalid_cursor = "invalid cursor: use the next URL of the previous page"

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> Any:
        self.model = queryset.model  # decode_cursor checks a position against the ordering field's type
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Any:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            # DRF says 404; the list exists, the cursor is what is wrong.
            raise ValidationError({"cursor": [self.invalid_cursor]}) from None
        # DRF passes the position through as text: on a numeric ordering a forged "-5" would quietly
        # restart the listing instead of saying the cursor is wrong.
        if cursor is not None and cursor.position is not None:
            field = self.model._meta.get_field(self.ordering[0].lstrip("-"))
            # Every integer field (the auto and big ones too) is an IntegerField.
            if isinstance(field, models.IntegerField) and not cursor.position.isdigit():
                raise ValidationError({"cursor": [self.invalid_cursor]})
        return cursor

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link()})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results", "next"],
            "properties": {
                "results": schema,
                "next": {
                    "type": "string",
                    "format": "uri",
                    "nullable": True,
                    "description": "the next page (same filters), or null on the last page",
                },
            },
        }


class DevicePagination(StaffPagination):
    ordering = "serial"


class AuditEventPagination(StaffPagination):
    ordering = "seq"  # oldest first


def query_filters(request: Request, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    """The query string, checked like a body: unknown or repeated parameters are a 400 naming them."""
    query: QueryDict = request.query_params
    repeated = sorted(name for name in query if len(query.getlist(name)) > 1)
    if repeated:
        raise ValidationError({name[:64]: ["give this parameter once"] for name in repeated[:10]})
    unknown = sorted(set(query) - set(serializer_class().fields))
    if unknown:
        raise ValidationError({name[:64]: ["unknown query parameter"] for name in unknown[:10]})
    # An empty value (`?state=&product=meter`) means no filter, as in a form left blank.
    serializer = serializer_class(data={name: query[name] for name in query if query[name] != ""})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class StaffApi(APIView):
    """What every staff call shares: the API key, its role's permission for the method, its rate limit."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [RolePermission]
    throttle_classes = [ApiKeyRateThrottle]
    metadata_class = None  # OPTIONS is a 405, like any other method a call does not have
    # The permission (of the role's group, as the admin checks it) each method needs.
    required_permissions: dict[str, str] = {}

    @property
    def allowed_methods(self) -> list[str]:
        return [method for method in super().allowed_methods if method != "OPTIONS"]

    @staticmethod
    def actor(request: Request) -> str:
        return request.user.actor

    @staticmethod
    def device_named(request: Request, serial: str) -> None:
        request._request.cvm_serial = serial[:64]
        if device_get(serial=serial) is None:
            raise NotFound(UNKNOWN_SERIAL)


def _headers(*names: tuple[str, list[int], str]) -> list[OpenApiParameter]:
    return [
        OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.HEADER, response=codes, description=description)
        for name, codes, description in names
    ]


AUTH_HEADERS = _headers(
    ("WWW-Authenticate", [401], "Api-Key"),
    ("Retry-After", [429, 503], "seconds to wait before trying again"),
)
TOKEN_HEADERS = _headers(("Cache-Control", [200, 201], "no-store (every answer under /api/ carries it)"))


def _answers(extra: dict[int, Any]) -> dict[int, Any]:
    """The answers every staff call may give, plus the call's own."""
    return {
        **extra,
        401: OpenApiResponse(
            DetailSerializer,
            description="no API key, or a wrong, revoked or expired one",
            examples=[OpenApiExample("wrong key", value={"detail": "invalid API key"}, status_codes=["401"])],
        ),
        403: OpenApiResponse(
            DetailSerializer,
            description="the key's role may not do this",
            examples=[
                OpenApiExample(
                    "role may not", value={"detail": "this API key's role may not do this"}, status_codes=["403"]
                )
            ],
        ),
        429: OpenApiResponse(DetailSerializer, description="over CVM_API_KEY_REQUESTS_PER_MINUTE; see Retry-After"),
    }


def page_of(name: str, item: serializers.Serializer) -> serializers.Serializer:
    return inline_serializer(
        name=name,
        fields={
            "results": item,
            "next": serializers.URLField(
                allow_null=True, help_text="the next page (same filters), or null on the last page"
            ),
        },
    )


BAD_REQUEST = OpenApiResponse(description="malformed request: DRF's `{field: [message, ...]}`")
TOO_LARGE = OpenApiResponse(DetailSerializer, description="body over the limit")


class DevicesApi(StaffApi):
    """Devices: list them (every role), register serials (factory, security)."""

    required_permissions = {"GET": "provisioning.view_device", "POST": "provisioning.import_devices"}

    @extend_schema(
        operation_id="list_devices",
        summary="List devices, cursor-paginated by serial",
        tags=["staff"],
        parameters=[
            DeviceFilterSerializer,
            *AUTH_HEADERS,
        ],
        responses=_answers({200: page_of("DevicePage", DeviceOutputSerializer(many=True)), 400: BAD_REQUEST}),
    )
    def get(self, request: Request) -> Response:
        filters = query_filters(request, DeviceFilterSerializer)
        paginator = DevicePagination()
        page = paginator.paginate_queryset(
            devices_list(state=filters.get("state"), product=filters.get("product")), request, view=self
        )
        return paginator.get_paginated_response(DeviceOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="register_devices",
        summary="Register serials, all or none (up to 100,000 per request; body up to CVM_API_BULK_MAX_BODY_BYTES)",
        tags=["staff"],
        request=DeviceRegisterInputSerializer,
        parameters=AUTH_HEADERS,
        responses=_answers(
            {
                201: DeviceRegisterOutputSerializer,
                400: OpenApiResponse(
                    description="malformed request; each bad entry is named by its index in `devices`",
                    examples=[
                        OpenApiExample(
                            "bad entries",
                            value={
                                "devices": {
                                    "1": {"serial": ["must be a JSON string"]},
                                    "4": {"serial": ["serial SN-0001 repeats entry 0"]},
                                }
                            },
                            status_codes=["400"],
                        )
                    ],
                ),
                413: TOO_LARGE,
            }
        ),
        examples=[
            OpenApiExample(
                "a factory line's batch",
                value={
                    "devices": [
                        {"serial": "SN-0001", "product": "thermostat"},
                        {"serial": "SN-0002", "product": "thermostat", "attributes": {"line": "L3"}},
                    ]
                },
                request_only=True,
            ),
            OpenApiExample("registered", value={"created": 2, "existing": 0}, response_only=True, status_codes=["201"]),
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = DeviceRegisterInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report = devices_import(rows=serializer.validated_data["devices"], actor=self.actor(request))
        return Response(
            DeviceRegisterOutputSerializer({"created": report.created, "existing": report.already_known}).data,
            status=status.HTTP_201_CREATED,
        )


class DeviceDetailApi(StaffApi):
    """One device (every role); its certificate history for the roles that may view certificates."""

    required_permissions = {"GET": "provisioning.view_device"}

    @extend_schema(
        operation_id="get_device",
        summary="A device and its certificate history",
        tags=["staff"],
        parameters=AUTH_HEADERS,
        responses=_answers({200: DeviceDetailOutputSerializer, 404: DetailSerializer}),
    )
    def get(self, request: Request, serial: str) -> Response:
        request._request.cvm_serial = serial[:64]
        device = device_with_certificates(serial=serial)
        if device is None:
            raise NotFound(UNKNOWN_SERIAL)
        return Response(device_detail(request, device))


def device_detail(request: Request, device: Any) -> dict[str, Any]:
    # The history is shown to the roles that may view certificates in the admin (security, auditor).
    context = {"with_certificates": request.user.has_perm("provisioning.view_certificate")}
    return DeviceDetailOutputSerializer(device, context=context).data


class TokensApi(StaffApi):
    """One-time registration tokens for the flashing station (factory, security)."""

    required_permissions = {"POST": "provisioning.issue_token"}

    @extend_schema(
        operation_id="issue_tokens",
        summary="Issue one-time registration tokens, all or none (the rules of issue_tokens)",
        description="Each device gets a new token; an unused one is replaced. A device that is active or "
        "revoked needs a reset (409), and an unknown serial is a 400 naming its index. The tokens are in this "
        "answer only: the portal keeps their HMAC digests.",
        tags=["staff"],
        request=TokensInputSerializer,
        parameters=[*AUTH_HEADERS, *TOKEN_HEADERS],
        responses=_answers(
            {
                201: TokensOutputSerializer,
                400: BAD_REQUEST,
                409: OpenApiResponse(DetailSerializer, description="a device's state does not allow a token"),
                413: TOO_LARGE,
            }
        ),
        examples=[
            OpenApiExample("tokens for a batch", value={"serials": ["SN-0001", "SN-0002"]}, request_only=True),
            OpenApiExample(
                "issued",
                value={
                    "tokens": [
                        {
                            "serial": "SN-0001",
                            "token": "3dfQm2x8mAbq9Yy1xKkTt0zS4HcVbUZr",
                            "expires_at": "2025-03-01T12:00:00Z",
                        }
                    ]
                },
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = TokensInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serials = serializer.validated_data["serials"]
        unknown = serials_unknown(serials)
        if unknown:
            raise ValidationError(
                {"serials": {index: [UNKNOWN_SERIAL] for index, serial in enumerate(serials) if serial in unknown}}
            )
        tokens = tokens_issue(
            serials=serials, actor=self.actor(request), ttl_days=serializer.validated_data.get("ttl_days")
        )
        return Response(TokensOutputSerializer({"tokens": tokens}).data, status=status.HTTP_201_CREATED)


class DeviceRevokeApi(StaffApi):
    """Revoke a device (security): its certificate stops working at once, audited with the key's name."""

    required_permissions = {"POST": "provisioning.revoke_device"}

    @extend_schema(
        operation_id="revoke_device",
        summary="Revoke the device's certificate in AWS IoT (REVOKED, detached) and in the database",
        tags=["staff"],
        request=RevokeInputSerializer,
        parameters=AUTH_HEADERS,
        responses=_answers(
            {
                200: DeviceDetailOutputSerializer,
                400: BAD_REQUEST,
                404: DetailSerializer,
                409: OpenApiResponse(DetailSerializer, description="the device is not active"),
                503: OpenApiResponse(DetailSerializer, description="AWS IoT did not answer; retry (it is safe)"),
            }
        ),
        examples=[OpenApiExample("stolen", value={"reason": "stolen from the warehouse"}, request_only=True)],
    )
    def post(self, request: Request, serial: str) -> Response:
        self.device_named(request, serial)
        serializer = RevokeInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device_revoke(serial=serial, reason=serializer.validated_data["reason"], actor=self.actor(request))
        device = device_with_certificates(serial=serial)
        return Response(device_detail(request, device))


class DeviceResetApi(StaffApi):
    """Reset a device (security): revoked if active, then a new token, shown in this answer only."""

    required_permissions = {"POST": "provisioning.reset_device"}

    @extend_schema(
        operation_id="reset_device",
        summary="Revoke the device's certificate if it has one and give it a new token",
        tags=["staff"],
        request=ResetInputSerializer,
        parameters=[*AUTH_HEADERS, *TOKEN_HEADERS],
        responses=_answers(
            {
                200: ResetOutputSerializer,
                400: BAD_REQUEST,
                404: DetailSerializer,
                409: OpenApiResponse(DetailSerializer, description="the device never had a certificate"),
                503: OpenApiResponse(DetailSerializer, description="AWS IoT did not answer; retry (it is safe)"),
            }
        ),
        examples=[OpenApiExample("RMA", value={"reason": "returned for repair", "ttl_days": 30}, request_only=True)],
    )
    def post(self, request: Request, serial: str) -> Response:
        self.device_named(request, serial)
        serializer = ResetInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token = device_reset(
            serial=serial, actor=self.actor(request), reason=data.get("reason", "reset"), ttl_days=data.get("ttl_days")
        )
        return Response(ResetOutputSerializer(token).data)


class AuditEventsApi(StaffApi):
    """The audit log for a SIEM (security, auditor): oldest first, filtered by serial, kind and time."""

    required_permissions = {"GET": "provisioning.view_auditevent"}

    @extend_schema(
        operation_id="list_audit_events",
        summary="The audit log, oldest first, cursor-paginated",
        tags=["staff"],
        parameters=[AuditFilterSerializer, *AUTH_HEADERS],
        responses=_answers({200: page_of("AuditEventPage", AuditEventOutputSerializer(many=True)), 400: BAD_REQUEST}),
    )
    def get(self, request: Request) -> Response:
        filters = query_filters(request, AuditFilterSerializer)
        paginator = AuditEventPagination()
        events = audit_events_list(serial=filters.get("serial"), kind=filters.get("kind"), since=filters.get("since"))
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOutputSerializer(page, many=True).data)
