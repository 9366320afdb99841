"""Staff API keys (SPEC §9): made by `create_api_key`, revoked in the admin; both audited."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..audit import audit_append
from ..models import ApiKeyRole, AuditKind, StaffApiKey
from .common import ServiceError

# The name goes into the audit log as `api-key:NAME` and into log lines: a plain word, like a host name.
API_KEY_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,49}\Z")
API_KEY_NAME_MESSAGE = "a key name is 1-50 of letters, digits, '.', '_' and '-', starting with a letter or digit"


@dataclass(frozen=True)
class NewApiKey:
    api_key: StaffApiKey
    key: str


def api_key_create(*, name: str, role: str, actor: str) -> NewApiKey:
    """Make a key for `role`; the plaintext key is returned once, to be shown once, and never stored."""
    if not API_KEY_NAME_RE.match(name):
        raise ServiceError(API_KEY_NAME_MESSAGE)
    if role not in ApiKeyRole.values:
        raise ServiceError(f"unknown role {role!r}; the roles are {', '.join(ApiKeyRole.values)}")
    try:
        with transaction.atomic():
            api_key, key = StaffApiKey.objects.create_key(name=name, role=role, created_by=actor)
            audit_append(
                kind=AuditKind.API_KEY_CREATED,
                actor=actor,
                data={"name": name, "role": role, "prefix": api_key.prefix},
            )
    except IntegrityError:
        raise ServiceError(
            f"a usable key named {name} exists already; revoke it first or choose another name"
        ) from None
    return NewApiKey(api_key=api_key, key=key)


def api_key_revoke(*, key_id: str, actor: str) -> bool:
    """Revoke a key for good (the library refuses to un-revoke); False when it already was revoked."""
    with transaction.atomic():
        api_key = StaffApiKey.objects.select_for_update().filter(pk=key_id).first()
        if api_key is None:
            raise ServiceError("no such API key")
        if api_key.revoked:
            return False
        StaffApiKey.objects.filter(pk=key_id).update(revoked=True, revoked_at=timezone.now(), revoked_by=actor)
        audit_append(
            kind=AuditKind.API_KEY_REVOKED,
            actor=actor,
            data={"name": api_key.name, "role": api_key.role, "prefix": api_key.prefix},
        )
    return True
