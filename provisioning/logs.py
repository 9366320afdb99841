"""One JSON object per log line, so values that came from a device cannot forge extra lines."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# Whatever a caller passes, these never reach a log line.
_SECRET_KEYS = {"token", "private_key_pem", "private_key", "csr", "certificate_pem", "password"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _RESERVED or key.startswith("_"):
                continue
            if key in _SECRET_KEYS:
                value = "[redacted]"
            elif key == "request" and hasattr(value, "path"):
                # Django attaches the request to its own log records; its repr carries the query string.
                value = value.path
            entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=True)
