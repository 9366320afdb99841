"""The token CSV (`serial,token,expires_at`): the only place a token is ever written down."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from .services import IssuedToken

HEADER = ["serial", "token", "expires_at"]


def tokens_csv(tokens: Iterable[IssuedToken]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for issued in tokens:
        writer.writerow([issued.serial, issued.token, issued.expires_at.isoformat().replace("+00:00", "Z")])
    return buffer.getvalue()


def token_file_open(path: Path) -> int:
    """Create the file with mode 0600 before any token exists, so a bad path costs no tokens.

    An existing file is never overwritten: it may hold the only copy of tokens already issued.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def token_file_write(fd: int, tokens: Iterable[IssuedToken]) -> None:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        os.fchmod(handle.fileno(), 0o600)  # the umask may have narrowed it; never wider than 0600
        handle.write(tokens_csv(tokens))
