"""Who calls the staff API: `Authorization: Api-Key <key>`, the key's role, and its request budget.

A key (djangorestframework-api-key: stored as a hash, found by its prefix) stands for one role; its
permissions are read at each request from the group named like the role, the same groups the admin
uses (SPEC §8), so a permission given to or taken from a role changes the key and the admin alike.
A missing or wrong key is a 401, a role that may not is a 403, and each key has its own rate limit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework_api_key.permissions import KeyParser

from .apis import FixedWindowThrottle
from .models import StaffApiKey

KEYWORD = "Api-Key"
INVALID_KEY = "invalid API key"
# A key is 8 + 1 + 32 characters; anything much longer is not one, and is not looked up.
MAX_KEY_LENGTH = 100
LAST_USED_EVERY = timedelta(minutes=1)


class ApiKeyPrincipal:
    """The caller behind a key: `request.user` of the staff API."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: StaffApiKey, permissions: frozenset[str]) -> None:
        self.api_key = api_key
        self.permissions = permissions

    @property
    def actor(self) -> str:
        """Who the audit log says did it."""
        return self.api_key.actor

    def has_perm(self, permission: str) -> bool:
        return permission in self.permissions

    def __str__(self) -> str:
        return self.actor


def role_permissions(role: str) -> frozenset[str]:
    """`app_label.codename` of every permission of the group named `role`."""
    rows = Permission.objects.filter(group__name=role).values_list("content_type__app_label", "codename")
    return frozenset(f"{app_label}.{codename}" for app_label, codename in rows)


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <key>`; no header: not authenticated (401), a wrong key: 401 too."""

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, StaffApiKey] | None:
        if not request.META.get("HTTP_AUTHORIZATION"):
            return None
        key = KeyParser().get_from_authorization(request)
        if not key:
            raise AuthenticationFailed(f"send the key as Authorization: {KEYWORD} <key>")
        key = key.strip()
        if len(key) > MAX_KEY_LENGTH:
            raise AuthenticationFailed(INVALID_KEY)
        try:
            api_key = StaffApiKey.objects.get_from_key(key)
        except StaffApiKey.DoesNotExist:
            raise AuthenticationFailed(INVALID_KEY) from None
        if api_key.has_expired:
            raise AuthenticationFailed(INVALID_KEY)
        now = timezone.now()
        if api_key.last_used_at is None or api_key.last_used_at < now - LAST_USED_EVERY:
            StaffApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        request._request.cvm_api_key = api_key.name  # for the request log
        return ApiKeyPrincipal(api_key, role_permissions(api_key.role)), api_key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer a missing key with 401 (and this challenge), not 403.
        return KEYWORD


class RolePermission(BasePermission):
    """The permission the view names for the method (`required_permissions`), held by the key's role."""

    message = "this API key's role may not do this"

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, ApiKeyPrincipal):
            return False  # DRF answers 401: no key was given
        needed = view.required_permissions.get("GET" if request.method == "HEAD" else request.method)
        # A method the call does not have gets its 405 from the view.
        return needed is None or principal.has_perm(needed)


class ApiKeyRateThrottle(FixedWindowThrottle):
    """At most CVM_API_KEY_REQUESTS_PER_MINUTE requests a minute per key, whatever address it comes from."""

    scope = "api-key:"

    def ident(self, request: Request) -> str:
        return request.user.api_key.pk

    def limit(self) -> int:
        return settings.CVM_API_KEY_REQUESTS_PER_MINUTE


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """The security scheme of the OpenAPI document."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"`{KEYWORD} <key>`, with a key made by `manage.py create_api_key NAME --role "
            "factory|security|auditor`. The key's role decides what it may do.",
        }
