"""The token CSV (`serial,token,expires_at`): the only place a token is ever written down."""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from .services import IssuedToken

HEADER = ["serial", "token", "expires_at"]


def tokens_csv(tokens: Iterable[IssuedToken]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    written: dict[datetime, str] = {}  # a run's tokens share one expiry: format it once
    for issued in tokens:
        expires = written.get(issued.expires_at)
        if expires is None:
            expires = written[issued.expires_at] = issued.expires_at.isoformat().replace("+00:00", "Z")
        writer.writerow([issued.serial, issued.token, expires])
    return buffer.getvalue()


def tokens_file_name(*, count: int, products: list[str], issued_at: datetime) -> str:
    """A name that says what the file holds and that no other run shares, so a download never lands on
    (or is mistaken for) an earlier one: tokens-thermostat-20261129-151047-490-3f9a.csv."""
    product = products[0] if len(products) == 1 else "mixed" if products else "devices"
    product = re.sub(r"[^A-Za-z0-9_.-]+", "_", product)[:40]
    return f"tokens-{product}-{issued_at:%Y%m%d-%H%M%S}-{count}-{secrets.token_hex(2)}.csv"


def token_file_open(path: Path) -> int:
    """Create the file with mode 0600 before any token exists, so a bad path costs no tokens.

    An existing file is never overwritten: it may hold the only copy of tokens already issued.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def token_file_write(fd: int, tokens: Iterable[IssuedToken]) -> None:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        os.fchmod(handle.fileno(), 0o600)  # the umask may have narrowed it; never wider than 0600
        handle.write(tokens_csv(tokens))
