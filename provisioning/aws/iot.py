"""AWS IoT: things, certificates, policies. Every call goes through `clients.iot`."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from .clients import (
    ALREADY_EXISTS,
    MISSING,
    MISSING_OR_DONE,
    AwsError,
    AwsRejected,
    call,
    executor,
    iot,
    iot_admit,
    iot_probe_client,
)

logger = logging.getLogger("provisioning.aws")


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
    response = iot("DescribeEndpoint", endpointType="iot:Data-ATS")
    return response["endpointAddress"]


def thing_ensure(*, thing_name: str, attributes: dict[str, str], thing_type: str = "") -> None:
    """Create the thing (with its thing type, when one is given), or bring its attributes and type up to
    date when it already exists."""
    payload = {"attributes": attributes, "merge": True}
    typed = {"thingTypeName": thing_type} if thing_type else {}
    try:
        iot("CreateThing", thingName=thing_name, attributePayload=payload, expected=ALREADY_EXISTS, **typed)
    except AwsRejected as exc:
        # AWS answers ResourceAlreadyExists when the thing exists with other attributes or another type.
        if exc.code != "ResourceAlreadyExistsException":
            raise
        iot("UpdateThing", thingName=thing_name, attributePayload=payload, **typed)


@dataclass(frozen=True)
class ThingInfo:
    thing_type: str  # "" when the thing has none
    attributes: dict[str, str]
    groups: frozenset[str]


def thing_describe(*, thing_name: str) -> ThingInfo | None:
    """The thing's type, attributes and thing groups (static and dynamic); None when it does not exist."""
    try:
        thing = iot("DescribeThing", thingName=thing_name, expected=MISSING)
    except AwsRejected as exc:
        if exc.code in MISSING:
            return None
        raise
    groups: set[str] = set()
    kwargs: dict[str, Any] = {"thingName": thing_name, "maxResults": 250}
    while True:
        page = iot("ListThingGroupsForThing", **kwargs)
        groups.update(group["groupName"] for group in page.get("thingGroups", []))
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return ThingInfo(
        thing_type=thing.get("thingTypeName") or "",
        attributes=dict(thing.get("attributes") or {}),
        groups=frozenset(groups),
    )


def thing_update(*, thing_name: str, attributes: dict[str, str], thing_type: str) -> None:
    """Set the thing's attributes to exactly `attributes`, and its type to `thing_type` ("" removes it)."""
    typed: dict[str, Any] = {"thingTypeName": thing_type} if thing_type else {"removeThingType": True}
    current = thing_describe(thing_name=thing_name)
    # AWS IoT removes an attribute that is given with an empty value when merge is on.
    removed = {name: "" for name in (current.attributes if current else {}) if name not in attributes}
    iot(
        "UpdateThing",
        thingName=thing_name,
        attributePayload={"attributes": {**attributes, **removed}, "merge": True},
        **typed,
    )


def thing_group_add(*, thing_name: str, group_name: str) -> None:
    iot("AddThingToThingGroup", thingName=thing_name, thingGroupName=group_name)


def thing_type_ensure(*, thing_type: str) -> bool:
    """Create the thing type when missing; True when it was created."""
    try:
        iot("DescribeThingType", thingTypeName=thing_type, expected=MISSING)
        return False
    except AwsRejected as exc:
        if exc.code not in MISSING:
            raise
    iot("CreateThingType", thingTypeName=thing_type)
    return True


def thing_group_ensure(*, group_name: str) -> bool:
    """Create the static thing group when missing; True when it was created."""
    try:
        iot("DescribeThingGroup", thingGroupName=group_name, expected=MISSING)
        return False
    except AwsRejected as exc:
        if exc.code not in MISSING:
            raise
    iot("CreateThingGroup", thingGroupName=group_name)
    return True


def certificate_create(*, csr_pem: str | None) -> NewCertificate:
    """Create an INACTIVE certificate: it becomes usable only when `certificate_activate` runs."""
    if csr_pem is None:
        response = iot("CreateKeysAndCertificate", setAsActive=False)
        private_key = response["keyPair"]["PrivateKey"]
        public_key = response["keyPair"].get("PublicKey")
    else:
        response = iot(
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
    iot("AttachPolicy", policyName=policy_name, target=certificate_arn)


def thing_attach(*, thing_name: str, certificate_arn: str) -> None:
    iot(
        "AttachThingPrincipal",
        thingName=thing_name,
        principal=certificate_arn,
    )


def certificate_activate(*, certificate_id: str) -> None:
    iot("UpdateCertificate", certificateId=certificate_id, newStatus="ACTIVE")


def _ignore_missing(operation: str, **kwargs: Any) -> None:
    try:
        iot(operation, expected=MISSING_OR_DONE, **kwargs)
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
        response = iot("DescribeCertificate", certificateId=certificate_id, expected=MISSING)
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
        response = iot("ListThingPrincipals", thingName=thing_name, expected=MISSING)
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


def certificate_provision_admit(*, csr: bool, thing_groups: tuple[str, ...] = ()) -> None:
    """Raise AwsUnavailable ("QuotaExhausted", with `retry_after`) unless every API `certificate_provision`
    calls has a slot of the quota soon; ask before claiming the device, so a vend turned away has cost
    nothing. The endpoint lookup is left out: one call per process, and cached."""
    iot_admit(
        [
            "CreateThing",
            "CreateCertificateFromCsr" if csr else "CreateKeysAndCertificate",
            "ListThingPrincipals",
            "AttachPolicy",
            "AttachThingPrincipal",
            *(["AddThingToThingGroup"] if thing_groups else []),
            "UpdateCertificate",
        ]
    )


def certificate_provision(
    *,
    thing_name: str,
    attributes: dict[str, str],
    csr_pem: str | None,
    policy_name: str,
    thing_type: str = "",
    thing_groups: tuple[str, ...] = (),
    known_certificate_ids: frozenset[str] = frozenset(),
    keep_certificate_ids: frozenset[str] = frozenset(),
) -> NewCertificate:
    """Thing, certificate, policy, attachment, activation — or nothing usable at all.

    Three dependent stages; the calls within a stage run concurrently:
      1. create the thing | create the certificate (INACTIVE) | look up the data endpoint
         | list what the thing already holds
      2. attach the policy | attach the certificate to the thing | add the thing to each of
         `thing_groups` | revoke what the thing held
         (`_strays_remove`; `known_certificate_ids` are the ones the database recorded, and
         `keep_certificate_ids` stay as they are: the current certificate, during a rotation)
      3. activate the certificate
    If any step fails, the certificate is deactivated, detached and deleted before the error is raised,
    so no ACTIVE certificate is left behind; a crash between steps leaves at worst an INACTIVE one,
    which claim recovery and `reconcile` remove.
    """
    pool = executor()
    thing_future = pool.submit(thing_ensure, thing_name=thing_name, attributes=attributes, thing_type=thing_type)
    cert_future = pool.submit(certificate_create, csr_pem=csr_pem)
    endpoint_future = pool.submit(iot_data_endpoint)
    # Listed before our certificate is attached, so everything found here is someone else's.
    strays_future = pool.submit(thing_certificates, thing_name=thing_name)
    certificate: NewCertificate | None = None
    try:
        certificate = cert_future.result()
        thing_future.result()
        endpoint_future.result()
        strays = [info for info in strays_future.result() if info.certificate_id not in keep_certificate_ids]
        attach_futures = [
            pool.submit(policy_attach, policy_name=policy_name, certificate_arn=certificate.arn),
            pool.submit(thing_attach, thing_name=thing_name, certificate_arn=certificate.arn),
            *(pool.submit(thing_group_add, thing_name=thing_name, group_name=group) for group in thing_groups),
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
        iot("GetPolicy", policyName=policy_name, expected=MISSING)
        return False
    except AwsRejected as exc:
        if exc.code != "ResourceNotFoundException":
            raise
    iot(
        "CreatePolicy",
        policyName=policy_name,
        policyDocument=json.dumps(device_policy_document()),
    )
    return True


def iot_probe(*, policy_name: str) -> None:
    """One signed AWS IoT call for readiness; raises AwsError when AWS IoT does not answer it.

    GetPolicy of the device policy: it proves what a vend needs first — AWS IoT reachable, the
    credentials and clock accepted, and the policy every certificate gets in place — and nothing less
    would: the cached data endpoint proves nothing after the first call. AWS IoT's quotas are per API
    and the vend path never calls GetPolicy, so the probe cannot take a device's share of the quota; it
    bypasses the governor (whose schedule is the vend APIs') and is made at most once per process every
    few seconds (provisioning/readiness.py).
    """
    call("GetPolicy", iot_probe_client().get_policy, policyName=policy_name)


def policy_targets(*, policy_name: str) -> set[str]:
    """Every principal (certificate ARN) the policy is attached to."""
    targets: set[str] = set()
    kwargs: dict[str, Any] = {"policyName": policy_name, "pageSize": 250}
    while True:
        response = iot("ListTargetsForPolicy", **kwargs)
        targets.update(response.get("targets", []))
        if not response.get("nextMarker"):
            return targets
        kwargs["marker"] = response["nextMarker"]


def policy_detach(*, policy_name: str, certificate_arn: str) -> None:
    _ignore_missing("DetachPolicy", policyName=policy_name, target=certificate_arn)
