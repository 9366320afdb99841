"""Auth signals, handed straight to the audit service; SQLite files kept owner-only."""

from __future__ import annotations

import logging
import os
import stat
from typing import Any

from django.http import HttpRequest

from .middleware import client_address
from .services import staff_login_record

logger = logging.getLogger(__name__)


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


def sqlite_files_private(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Make a SQLite database and its side files owner-only as soon as it is opened.

    It holds password hashes, token digests and the audit log. SQLite creates the file with the
    process umask (often 0644), whoever opens it first (`migrate`, the test runner, the portal), and
    gives its WAL and shared-memory files the database file's own mode.
    """
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return
    name = str(connection.settings_dict["NAME"])
    for path in (name, f"{name}-wal", f"{name}-shm", f"{name}-journal"):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change: say so rather than stop the portal
            logger.warning("cannot make the SQLite file owner-only", extra={"path": path, "error": str(exc)})
