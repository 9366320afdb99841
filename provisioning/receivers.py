"""Auth signals, handed straight to the audit service."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from .middleware import client_address
from .services import staff_login_record


def staff_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    staff_login_record(
        username=user.get_username(),
        succeeded=True,
        client_address=client_address(request) if request is not None else None,
    )


def staff_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # `credentials` has the password already masked by Django; only the username is kept.
    staff_login_record(
        username=str(credentials.get("username", "")),
        succeeded=False,
        client_address=client_address(request) if request is not None else None,
    )
