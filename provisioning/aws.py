"""The AWS boundary: the only module that imports boto3.

It exposes a few functions that return dataclasses and turns every botocore error into one of two
domain exceptions: `AwsUnavailable` (transient: throttling, timeouts, outages; worth retrying later)
and `AwsRejected` (AWS said no for good). Nothing outside this module sees a boto3 dict.

IAM actions the portal needs:
    iot:CreateThing, iot:UpdateThing, iot:DescribeThing, iot:ListThingPrincipals,
    iot:CreateKeysAndCertificate, iot:CreateCertificateFromCsr, iot:DescribeCertificate,
    iot:UpdateCertificate, iot:DeleteCertificate, iot:ListPrincipalThings,
    iot:AttachPolicy, iot:DetachPolicy, iot:AttachThingPrincipal, iot:DetachThingPrincipal,
    iot:DescribeEndpoint, iot:GetPolicy, iot:CreatePolicy (bootstrap_aws only),
    dynamodb:PutItem, dynamodb:DeleteItem, dynamodb:Scan, dynamodb:GetItem,
    dynamodb:DescribeTable, dynamodb:CreateTable (bootstrap_aws only)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from . import governor, metrics

logger = logging.getLogger(__name__)

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


class AwsError(Exception):
    """Base of the two domain errors; `code` is AWS's error code or a short name of the failure."""

    kind = "error"  # "transient" or "configuration": metrics, logs and the dashboard tell them apart

    def __init__(self, code: str, operation: str, retry_after: int = OUTAGE_RETRY_AFTER) -> None:
        super().__init__(f"{operation}: {code}")
        self.code = code
        self.operation = operation
        self.retry_after = retry_after
        # Set by certificate_provision when it could not remove the certificate it had created.
        self.leftover_certificate_id: str | None = None


class AwsUnavailable(AwsError):
    """AWS could not be reached, timed out or throttled us after the retries botocore made."""

    kind = "transient"


class AwsRejected(AwsError):
    """AWS refused the request for a reason a retry will not change: usually the portal's configuration
    (a missing policy or thing type, access denied, an account limit)."""

    kind = "configuration"


def _translate(operation: str, exc: Exception) -> AwsError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in TRANSIENT_CODES or "Throttl" in code:
            return AwsUnavailable(code, operation, THROTTLE_RETRY_AFTER)
        if status >= 500:
            return AwsUnavailable(code, operation)
        return AwsRejected(code, operation)
    # Connection errors, timeouts and anything else botocore raises: AWS could not be reached.
    return AwsUnavailable(type(exc).__name__, operation)


def _call(operation: str, fn: Callable[..., T], /, *, expected: frozenset[str] = frozenset(), **kwargs: Any) -> T:
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
        error = _translate(operation, exc)
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


def _iot(operation: str, /, *, expected: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
    """An AWS IoT call, after the quota governor granted it a slot."""
    try:
        governor.acquire(operation)
    except governor.QuotaExhausted as exc:
        metrics.AWS_QUOTA_REFUSALS.labels(operation).inc()
        raise AwsUnavailable("QuotaExhausted", operation, max(1, math.ceil(exc.retry_after))) from None
    return _call(operation, getattr(iot_client(), xform_name(operation)), expected=expected, **kwargs)


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


def _client(service: str) -> Any:
    # Endpoints come from boto3's own environment variables (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_IOT ...),
    # which an explicit endpoint_url would override. botocore reads AWS_DEFAULT_REGION but not
    # AWS_REGION, which the SDKs of other languages use, so that one is passed on here.
    try:
        with _client_lock:  # building clients from one session in parallel is not thread safe
            return boto3.session.Session().client(
                service, region_name=os.environ.get("AWS_REGION") or None, config=_config()
            )
    except BotoCoreError as exc:  # no region, no credentials file, a malformed endpoint ...
        raise AwsRejected(type(exc).__name__, f"create {service} client") from None


@functools.cache
def iot_client() -> Any:
    client = _client("iot")
    client.meta.events.register_first("needs-retry.iot", _refuse_hard_limits)
    return client


@functools.cache
def dynamodb_client() -> Any:
    return _client("dynamodb")


@functools.cache
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="aws")


def clients_reset() -> None:
    """Forget cached clients and the endpoint (tests switch between moto and servers)."""
    iot_client.cache_clear()
    dynamodb_client.cache_clear()
    iot_data_endpoint.cache_clear()


# --- AWS IoT -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewCertificate:
    certificate_id: str
    arn: str
    certificate_pem: str
    private_key_pem: str | None  # only when AWS generated the key; never stored
    public_key_pem: str | None = None  # likewise
    # Certificates the thing already held that were set REVOKED (or deleted, if never activated)
    # before this one was activated: the thing never has two usable certificates.
    strays_revoked: tuple[str, ...] = ()
    strays_discarded: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertificateInfo:
    certificate_id: str
    arn: str
    status: str  # ACTIVE, INACTIVE, REVOKED, PENDING_TRANSFER ...
    pem: str = ""


@functools.cache
def iot_data_endpoint() -> str:
    """The account's `iot:Data-ATS` host; it never changes, so one call per process is enough."""
    response = _iot("DescribeEndpoint", endpointType="iot:Data-ATS")
    return response["endpointAddress"]


def thing_ensure(*, thing_name: str, attributes: dict[str, str]) -> None:
    """Create the thing, or bring its attributes up to date when it already exists."""
    payload = {"attributes": attributes, "merge": True}
    try:
        _iot("CreateThing", thingName=thing_name, attributePayload=payload, expected=ALREADY_EXISTS)
    except AwsRejected as exc:
        # AWS answers ResourceAlreadyExists when the thing exists with other attributes.
        if exc.code != "ResourceAlreadyExistsException":
            raise
        _iot("UpdateThing", thingName=thing_name, attributePayload=payload)


def certificate_create(*, csr_pem: str | None) -> NewCertificate:
    """Create an INACTIVE certificate: it becomes usable only when `certificate_activate` runs."""
    if csr_pem is None:
        response = _iot("CreateKeysAndCertificate", setAsActive=False)
        private_key = response["keyPair"]["PrivateKey"]
        public_key = response["keyPair"].get("PublicKey")
    else:
        response = _iot(
            "CreateCertificateFromCsr",
            certificateSigningRequest=csr_pem,
            setAsActive=False,
        )
        private_key = public_key = None
    return NewCertificate(
        certificate_id=response["certificateId"],
        arn=response["certificateArn"],
        certificate_pem=response["certificatePem"],
        private_key_pem=private_key,
        public_key_pem=public_key,
    )


def policy_attach(*, policy_name: str, certificate_arn: str) -> None:
    _iot("AttachPolicy", policyName=policy_name, target=certificate_arn)


def thing_attach(*, thing_name: str, certificate_arn: str) -> None:
    _iot(
        "AttachThingPrincipal",
        thingName=thing_name,
        principal=certificate_arn,
    )


def certificate_activate(*, certificate_id: str) -> None:
    _iot("UpdateCertificate", certificateId=certificate_id, newStatus="ACTIVE")


def _ignore_missing(operation: str, **kwargs: Any) -> None:
    try:
        _iot(operation, expected=MISSING_OR_DONE, **kwargs)
    except AwsRejected as exc:
        if exc.code not in MISSING_OR_DONE:
            raise


def certificate_revoke(*, certificate_id: str, certificate_arn: str, thing_name: str, policy_name: str) -> None:
    """REVOKED first, so the certificate stops working before anything else happens, then detach."""
    _ignore_missing("UpdateCertificate", certificateId=certificate_id, newStatus="REVOKED")
    _ignore_missing("DetachThingPrincipal", thingName=thing_name, principal=certificate_arn)
    _ignore_missing("DetachPolicy", policyName=policy_name, target=certificate_arn)


def certificate_discard(*, certificate_id: str, certificate_arn: str, thing_name: str, policy_name: str) -> None:
    """Undo a certificate that was never handed out: deactivate, detach, delete.

    INACTIVE comes first so that, whatever fails after it, the certificate cannot be used. Every step is
    tried even when an earlier one failed (the activation we are undoing may never have happened), and
    the first error is raised at the end.
    """
    steps: list[tuple[str, dict[str, Any]]] = [
        ("UpdateCertificate", {"certificateId": certificate_id, "newStatus": "INACTIVE"}),
        ("DetachThingPrincipal", {"thingName": thing_name, "principal": certificate_arn}),
        ("DetachPolicy", {"policyName": policy_name, "target": certificate_arn}),
        ("DeleteCertificate", {"certificateId": certificate_id, "forceDelete": True}),
    ]
    errors: list[AwsError] = []
    for operation, kwargs in steps:
        try:
            _ignore_missing(operation, **kwargs)
        except AwsError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def certificate_describe(*, certificate_id: str) -> CertificateInfo | None:
    try:
        response = _iot("DescribeCertificate", certificateId=certificate_id, expected=MISSING)
    except AwsRejected as exc:
        if exc.code == "ResourceNotFoundException":
            return None
        raise
    description = response["certificateDescription"]
    return CertificateInfo(
        certificate_id=description["certificateId"],
        arn=description["certificateArn"],
        status=description["status"],
        pem=description.get("certificatePem", ""),
    )


def thing_certificates(*, thing_name: str) -> list[CertificateInfo]:
    """Every certificate attached to the thing, with its status; empty when the thing does not exist."""
    try:
        response = _iot("ListThingPrincipals", thingName=thing_name, expected=MISSING)
    except AwsRejected as exc:
        if exc.code == "ResourceNotFoundException":
            return []
        raise
    infos = []
    for arn in response.get("principals", []):
        if ":cert/" not in arn:
            continue
        info = certificate_describe(certificate_id=arn.rsplit("/", 1)[1])
        if info is not None:
            infos.append(info)
    return infos


def _strays_remove(
    strays: list[CertificateInfo], *, known: frozenset[str], thing_name: str, policy_name: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Apply reconcile's rule to what the thing already holds: nothing else stays usable.

    A certificate the database recorded, or one AWS holds ACTIVE, is set REVOKED and detached (never
    adopted, never deleted: it may be evidence). One the database never saw and that was never
    activated is a leftover of an issuance that did not finish, and is deleted.
    Returns (revoked ids, discarded ids).
    """
    revoked, discarded = [], []
    for info in strays:
        if info.status == "REVOKED":
            continue
        action = certificate_revoke if info.status == "ACTIVE" or info.certificate_id in known else certificate_discard
        action(
            certificate_id=info.certificate_id, certificate_arn=info.arn, thing_name=thing_name, policy_name=policy_name
        )
        (revoked if action is certificate_revoke else discarded).append(info.certificate_id)
    return tuple(revoked), tuple(discarded)


def certificate_provision(
    *,
    thing_name: str,
    attributes: dict[str, str],
    csr_pem: str | None,
    policy_name: str,
    known_certificate_ids: frozenset[str] = frozenset(),
) -> NewCertificate:
    """Thing, certificate, policy, attachment, activation — or nothing usable at all.

    Three dependent stages; the calls within a stage run concurrently:
      1. create the thing | create the certificate (INACTIVE) | look up the data endpoint
         | list what the thing already holds
      2. attach the policy | attach the certificate to the thing | revoke what the thing held
         (`_strays_remove`; `known_certificate_ids` are the ones the database recorded)
      3. activate the certificate
    If any step fails, the certificate is deactivated, detached and deleted before the error is raised,
    so no ACTIVE certificate is left behind; a crash between steps leaves at worst an INACTIVE one,
    which claim recovery and `reconcile` remove.
    """
    pool = _executor()
    thing_future = pool.submit(thing_ensure, thing_name=thing_name, attributes=attributes)
    cert_future = pool.submit(certificate_create, csr_pem=csr_pem)
    endpoint_future = pool.submit(iot_data_endpoint)
    # Listed before our certificate is attached, so everything found here is someone else's.
    strays_future = pool.submit(thing_certificates, thing_name=thing_name)
    certificate: NewCertificate | None = None
    try:
        certificate = cert_future.result()
        thing_future.result()
        endpoint_future.result()
        strays = strays_future.result()
        attach_futures = [
            pool.submit(policy_attach, policy_name=policy_name, certificate_arn=certificate.arn),
            pool.submit(thing_attach, thing_name=thing_name, certificate_arn=certificate.arn),
        ]
        strays_removed = pool.submit(
            _strays_remove, strays, known=known_certificate_ids, thing_name=thing_name, policy_name=policy_name
        )
        for future in [*attach_futures, strays_removed]:
            future.exception()  # wait for all before deciding, so compensation sees a settled state
        for future in attach_futures:
            future.result()
        revoked, discarded = strays_removed.result()
        certificate_activate(certificate_id=certificate.certificate_id)
        return dataclasses.replace(certificate, strays_revoked=revoked, strays_discarded=discarded)
    except BaseException as exc:
        if certificate is not None:
            removed = certificate_discard_quietly(certificate, thing_name=thing_name, policy_name=policy_name)
            if not removed and isinstance(exc, AwsError):
                exc.leftover_certificate_id = certificate.certificate_id
        raise


def certificate_discard_quietly(certificate: NewCertificate, *, thing_name: str, policy_name: str) -> bool:
    """Discard, logging instead of raising; False when AWS did not let us finish."""
    try:
        certificate_discard(
            certificate_id=certificate.certificate_id,
            certificate_arn=certificate.arn,
            thing_name=thing_name,
            policy_name=policy_name,
        )
        return True
    except AwsError as exc:
        # The device is flagged and the next vend for it, or `reconcile`, removes it once AWS answers.
        logger.warning(
            "could not discard an unissued certificate",
            extra={"certificate_id": certificate.certificate_id, "code": exc.code},
        )
        return False


def device_policy_document() -> dict[str, Any]:
    """Least privilege through policy variables: one policy serves every device.

    A device may connect only with its own thing name as client id, and only while its certificate is
    attached to that thing; it may publish, subscribe and receive only under `things/<thing name>/`.
    """
    thing = "${iot:Connection.Thing.ThingName}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"arn:aws:iot:*:*:client/{thing}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": f"arn:aws:iot:*:*:topic/things/{thing}/*",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": f"arn:aws:iot:*:*:topicfilter/things/{thing}/*",
            },
        ],
    }


def policy_ensure(*, policy_name: str) -> bool:
    """Create the device policy when missing; True when it was created."""
    try:
        _iot("GetPolicy", policyName=policy_name, expected=MISSING)
        return False
    except AwsRejected as exc:
        if exc.code != "ResourceNotFoundException":
            raise
    _iot(
        "CreatePolicy",
        policyName=policy_name,
        policyDocument=json.dumps(device_policy_document()),
    )
    return True


def policy_targets(*, policy_name: str) -> set[str]:
    """Every principal (certificate ARN) the policy is attached to."""
    targets: set[str] = set()
    kwargs: dict[str, Any] = {"policyName": policy_name, "pageSize": 250}
    while True:
        response = _iot("ListTargetsForPolicy", **kwargs)
        targets.update(response.get("targets", []))
        if not response.get("nextMarker"):
            return targets
        kwargs["marker"] = response["nextMarker"]


def policy_detach(*, policy_name: str, certificate_arn: str) -> None:
    _ignore_missing("DetachPolicy", policyName=policy_name, target=certificate_arn)


# --- DynamoDB ------------------------------------------------------------------------------------

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def table_ensure(*, table_name: str) -> bool:
    """Create the association table (on-demand billing) when missing; True when it was created."""
    try:
        _call("DescribeTable", dynamodb_client().describe_table, TableName=table_name, expected=MISSING)
        return False
    except AwsRejected as exc:
        if exc.code != "ResourceNotFoundException":
            raise
    _call(
        "CreateTable",
        dynamodb_client().create_table,
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": "productId", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "productId", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    waiter = dynamodb_client().get_waiter("table_exists")
    waiter.wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return True


def association_put(*, table_name: str, item: dict[str, Any]) -> bool:
    """Write an item unless the table already holds the same or a newer version; False when it did."""
    try:
        _call(
            "PutItem",
            dynamodb_client().put_item,
            expected=CONDITION_FAILED,
            TableName=table_name,
            Item={key: _serializer.serialize(value) for key, value in item.items() if value is not None},
            ConditionExpression="attribute_not_exists(productId) OR version < :version",
            ExpressionAttributeValues={":version": _serializer.serialize(item["version"])},
        )
        return True
    except AwsRejected as exc:
        if exc.code in CONDITION_FAILED:
            return False
        raise


def association_replace(*, table_name: str, item: dict[str, Any]) -> None:
    """Write an item whatever the table holds (reconcile: the database wins)."""
    _call(
        "PutItem",
        dynamodb_client().put_item,
        TableName=table_name,
        Item={key: _serializer.serialize(value) for key, value in item.items() if value is not None},
    )


def association_delete(*, table_name: str, serial: str) -> None:
    _call("DeleteItem", dynamodb_client().delete_item, TableName=table_name, Key={"productId": {"S": serial}})


def table_scan(*, table_name: str) -> Iterator[dict[str, Any]]:
    """Every item of a DynamoDB table, as plain Python values (numbers as int)."""
    kwargs: dict[str, Any] = {"TableName": table_name, "ConsistentRead": True}
    while True:
        response = _call("Scan", dynamodb_client().scan, **kwargs)
        for raw in response.get("Items", []):
            item = {key: _deserializer.deserialize(value) for key, value in raw.items()}
            yield {key: int(value) if type(value).__name__ == "Decimal" else value for key, value in item.items()}
        if "LastEvaluatedKey" not in response:
            return
        kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
