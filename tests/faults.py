"""Fault injection at the boto3 boundary: chosen calls of the portal's own clients answer with an error.

The hook sits on botocore's `before-send` event, so botocore's real retry logic runs against it (a
`Stubber` error is never retried). Only the portal's clients get it; the tests' own clients
(`tests.awsstate`) keep seeing AWS as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from provisioning import aws

# Every before-send handler runs and moto's matches on the URL: pointing the request elsewhere keeps
# moto from carrying out a call that is meant never to have arrived.
NOWHERE = "https://fault-injected.invalid/"


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class Fault:
    service: str
    operation: str | None
    calls: int = 0
    active: bool = True
    remove: Callable[[], None] = field(default=lambda: None, repr=False)

    def heal(self) -> None:
        """From now on the calls go through; `calls` keeps counting what failed."""
        self.active = False


def inject_fault(
    operation: str | None,
    *,
    service: str = "iot",
    code: str = "ServiceUnavailableException",
    status: int = 503,
    times: int = 10**6,
    reached_aws: bool = False,
    when: Callable[[AWSPreparedRequest], bool] | None = None,
) -> Fault:
    """Make `operation` of `service` (every operation when None) fail with HTTP `status` and error `code`.

    `times` failures at most, only for requests `when` accepts. With `reached_aws=True` AWS (moto)
    carries the call out and only the answer is lost, as with a read timeout; otherwise the call never
    arrives. Call the returned fault's `remove()` when done (the `aws_fault` fixture does).
    """
    fault = Fault(service, operation)

    def handler(request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        if not fault.active or fault.calls >= times or (when is not None and not when(request)):
            return None
        fault.calls += 1
        body = json.dumps({"message": "injected failure", "__type": code}).encode()
        headers = {"x-amzn-ErrorType": code, "Content-Type": "application/json"}
        response = AWSResponse(request.url, status, headers, _Raw(body))
        if not reached_aws:
            request.url = NOWHERE
        return response

    client = {"iot": aws.iot_client, "dynamodb": aws.dynamodb_client}[service]()
    event = f"before-send.{service}" + (f".{operation}" if operation else "")
    # First, so it answers before moto's own handler sees the request.
    client.meta.events.register_first(event, handler)
    fault.remove = lambda: client.meta.events.unregister(event, handler)
    return fault
