"""The image's HEALTHCHECK: exit 0 when this container's gunicorn answers GET /api/v1/ready with 200.

Standard library only. Plain HTTP to the port of GUNICORN_BIND (TLS ends at the proxy), with the first
ALLOWED_HOSTS name as Host, since Django refuses any other; /api/v1/ready is exempt from the HTTPS redirect.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("GUNICORN_BIND", "127.0.0.1:8443").rsplit(":", 1)[1]
    host = (os.environ.get("ALLOWED_HOSTS", "localhost").split(",")[0].strip() or "localhost").lstrip(".")
    if host in ("", "*"):
        host = "localhost"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/ready", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - fixed http URL on loopback
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as error:
        print(f"not ready: {error.code} {error.read(500).decode(errors='replace')}", file=sys.stderr)
    except OSError as error:
        print(f"not ready: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
