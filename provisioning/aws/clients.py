"""Cached boto3 clients with an explicit retry configuration, and the one wrapper every AWS call goes
through: it asks the quota governor (AWS IoT), meters the call, logs and counts a failure, and turns
every botocore error into one of two domain exceptions: `AwsUnavailable` (transient: throttling,
timeouts, outages; worth retrying later) and `AwsRejected` (AWS said no for good, usually the portal's
configuration)."""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from .. import governor, metrics

logger = logging.getLogger("provisioning.aws")

T = TypeVar("T")

# Errors that mean "not now": worth a retry later, answered to devices as 503.
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalFailureException",
        "InternalServerError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# botocore's standard mode retries these as throttling, but in AWS IoT they mean a hard account limit
# (e.g. too many certificates): retrying only burns the control-plane quota, so they fail at once.
NOT_RETRIED_CODES = frozenset({"LimitExceededException"})
# Answers a caller expects and handles (not failures worth logging or counting).
MISSING = frozenset({"ResourceNotFoundException"})
ALREADY_EXISTS = frozenset({"ResourceAlreadyExistsException"})
# Detaching what is not attached, or revoking what is already revoked, is InvalidRequest in AWS IoT.
MISSING_OR_DONE = frozenset({"ResourceNotFoundException", "InvalidRequestException"})
CONDITION_FAILED = frozenset({"ConditionalCheckFailedException"})
THROTTLE_RETRY_AFTER = 5
OUTAGE_RETRY_AFTER = 15


# Each service as staff know it, by boto3's name for it: what an AwsError names as the one that failed.
SERVICE_NAMES = {"iot": "AWS IoT", "dynamodb": "DynamoDB", "s3": "Amazon S3"}


class AwsError(Exception):
    """Base of the two domain errors; `code` is AWS's error code or a short name of the failure."""

    kind = "error"  # "transient" or "configuration": metrics, logs and the dashboard tell them apart

    def __init__(
        self, code: str, operation: str, retry_after: int = OUTAGE_RETRY_AFTER, *, service: str = SERVICE_NAMES["iot"]
    ) -> None:
        super().__init__(f"{operation}: {code}")
        self.code = code
        self.operation = operation
        self.retry_after = retry_after
        self.service = service  # who did not answer or refused: one of SERVICE_NAMES
        # Set by certificate_provision when it could not remove the certificate it had created.
        self.leftover_certificate_id: str | None = None


class AwsUnavailable(AwsError):
    """AWS could not be reached, timed out or throttled us after the retries botocore made."""

    kind = "transient"


class AwsRejected(AwsError):
    """AWS refused the request for a reason a retry will not change: usually the portal's configuration
    (a missing policy or thing type, access denied, an account limit)."""

    kind = "configuration"


def _translate(operation: str, exc: Exception, service: str) -> AwsError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in TRANSIENT_CODES or "Throttl" in code:
            return AwsUnavailable(code, operation, THROTTLE_RETRY_AFTER, service=service)
        if status >= 500:
            return AwsUnavailable(code, operation, service=service)
        return AwsRejected(code, operation, service=service)
    # Connection errors, timeouts and anything else botocore raises: AWS could not be reached.
    return AwsUnavailable(type(exc).__name__, operation, service=service)


def call(
    operation: str,
    fn: Callable[..., T],
    /,
    *,
    expected: frozenset[str] = frozenset(),
    service: str = SERVICE_NAMES["iot"],
    **kwargs: Any,
) -> T:
    """Make one AWS call; translate, log and count its failure.

    `expected` names error codes the caller handles as an answer (ResourceNotFound while ensuring a
    resource exists): those are neither logged nor counted. Every other refusal is logged at ERROR with
    operation and code, since a permanent refusal (a missing policy, access denied) means the fleet's
    devices will get 503 until someone fixes the configuration; a transient failure is a WARNING.
    """
    started = time.perf_counter()
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        error = _translate(operation, exc, service)
        if error.code not in expected:
            _report(error)
        raise error from None
    finally:
        metrics.AWS_CALL_SECONDS.labels(operation).observe(time.perf_counter() - started)


def _report(error: AwsError) -> None:
    if error.retry_after == THROTTLE_RETRY_AFTER:
        metrics.AWS_THROTTLES.labels(error.operation).inc()
    metrics.AWS_ERRORS.labels(error.operation, error.code, error.kind).inc()
    if isinstance(error, AwsRejected):
        logger.error(
            "AWS refused a call: check the portal's AWS configuration",
            extra={"operation": error.operation, "code": error.code, "error_kind": error.kind},
        )
    else:
        logger.warning(
            "AWS call failed", extra={"operation": error.operation, "code": error.code, "error_kind": error.kind}
        )


def iot(operation: str, /, *, expected: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
    """An AWS IoT call by its API name (`"CreateThing"`), after the quota governor granted it a slot."""
    try:
        governor.acquire(operation)
    except governor.QuotaExhausted as exc:
        metrics.AWS_QUOTA_REFUSALS.labels(operation).inc()
        raise AwsUnavailable("QuotaExhausted", operation, max(1, math.ceil(exc.retry_after))) from None
    return call(operation, getattr(iot_client(), xform_name(operation)), expected=expected, **kwargs)


def iot_admit(operations: list[str]) -> None:
    """Raise AwsUnavailable ("QuotaExhausted") unless the quota governor has a slot soon for each of
    `operations` (AWS IoT API names); reserves nothing and calls nothing."""
    try:
        governor.admit(operations)
    except governor.QuotaExhausted as exc:
        metrics.AWS_QUOTA_REFUSALS.labels(exc.operation).inc()
        raise AwsUnavailable("QuotaExhausted", exc.operation, max(1, math.ceil(exc.retry_after))) from None


def s3(operation: str, /, *, expected: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
    """An S3 call by its API name (audit anchors only)."""
    return call(
        operation, getattr(s3_client(), xform_name(operation)), expected=expected, service=SERVICE_NAMES["s3"], **kwargs
    )


def dynamodb(operation: str, /, *, expected: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
    """A DynamoDB call by its API name (`"PutItem"`)."""
    return call(
        operation,
        getattr(dynamodb_client(), xform_name(operation)),
        expected=expected,
        service=SERVICE_NAMES["dynamodb"],
        **kwargs,
    )


def _refuse_hard_limits(response: Any = None, operation: Any = None, **_: Any) -> None:
    # Registered first on `needs-retry`: raising here ends botocore's retry loop for this call with
    # the same ClientError the caller would have seen without retries.
    if response is None or operation is None:
        return
    parsed = response[1]
    if parsed.get("Error", {}).get("Code") in NOT_RETRIED_CODES:
        raise ClientError(parsed, operation.name)


def _config() -> Config:
    return Config(
        retries={"mode": "standard", "total_max_attempts": settings.CVM_AWS_MAX_ATTEMPTS},
        connect_timeout=settings.CVM_AWS_CONNECT_TIMEOUT,
        read_timeout=settings.CVM_AWS_READ_TIMEOUT,
        max_pool_connections=64,
    )


_client_lock = threading.Lock()


def _client(service: str, config: Config | None = None) -> Any:
    # Endpoints come from boto3's own environment variables (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_IOT ...),
    # which an explicit endpoint_url would override. botocore reads AWS_DEFAULT_REGION but not
    # AWS_REGION, which the SDKs of other languages use, so that one is passed on here.
    try:
        with _client_lock:  # building clients from one session in parallel is not thread safe
            return boto3.session.Session().client(
                service, region_name=os.environ.get("AWS_REGION") or None, config=config or _config()
            )
    except BotoCoreError as exc:  # no region, no credentials file, a malformed endpoint ...
        raise AwsRejected(type(exc).__name__, f"create {service} client", service=SERVICE_NAMES[service]) from None


@functools.cache
def iot_client() -> Any:
    client = _client("iot")
    client.meta.events.register_first("needs-retry.iot", _refuse_hard_limits)
    return client


@functools.cache
def iot_probe_client() -> Any:
    """AWS IoT for the readiness probe: one attempt and short timeouts, since a probe that waits out
    botocore's retries answers after its caller has given up."""
    return _client(
        "iot",
        Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=min(settings.CVM_AWS_CONNECT_TIMEOUT, settings.CVM_READY_TIMEOUT_SECONDS),
            read_timeout=min(settings.CVM_AWS_READ_TIMEOUT, settings.CVM_READY_TIMEOUT_SECONDS),
        ),
    )


@functools.cache
def dynamodb_client() -> Any:
    return _client("dynamodb")


@functools.cache
def s3_client() -> Any:
    return _client("s3")


@functools.cache
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="aws")
