"""The AWS boundary: the only package that imports boto3.

`clients` builds the cached clients and holds the one wrapper every call goes through (quota governor,
metrics, logs, error translation into `AwsUnavailable` / `AwsRejected`); `iot` and `dynamodb` expose a
few functions that return dataclasses or plain values. Nothing outside this package sees a boto3 dict.

`IAM_ACTIONS` is every action the portal calls, and nothing else; deploy/iam-policy.json grants exactly
these, scoped to the resources the calls name (deploy/iam-policy-audit-anchors.json the S3 ones).
tests/test_aws_boundary.py records every request sent while the portal does everything it does (vend
with and without a CSR, rotation, revoke, reset, reconcile with repairs, the mirror, readiness,
bootstrap, the legacy import, S3 anchors) and fails if the policy does not allow one, or if the policy
or this list names an action never called.
"""

from __future__ import annotations

from .clients import (
    THROTTLE_RETRY_AFTER,
    AwsError,
    AwsRejected,
    AwsUnavailable,
    dynamodb_client,
    iot_client,
)
from .clients import dynamodb_client as _dynamodb_client
from .clients import iot_client as _iot_client
from .clients import iot_probe_client as _iot_probe_client
from .clients import s3_client as _s3_client
from .dynamodb import association_delete, association_put, association_replace, table_ensure, table_scan
from .iot import (
    CertificateInfo,
    NewCertificate,
    ThingInfo,
    certificate_activate,
    certificate_create,
    certificate_describe,
    certificate_discard,
    certificate_discard_quietly,
    certificate_provision,
    certificate_provision_admit,
    certificate_revoke,
    device_policy_document,
    iot_data_endpoint,
    iot_probe,
    policy_attach,
    policy_detach,
    policy_ensure,
    policy_targets,
    thing_attach,
    thing_certificates,
    thing_describe,
    thing_ensure,
    thing_group_add,
    thing_group_ensure,
    thing_type_ensure,
    thing_update,
)
from .s3 import anchor_put, anchors_list

IAM_ACTIONS: frozenset[str] = frozenset(
    {
        # AWS IoT: issuance
        "iot:DescribeEndpoint",
        "iot:CreateThing",
        "iot:UpdateThing",
        "iot:CreateKeysAndCertificate",
        "iot:CreateCertificateFromCsr",
        "iot:AttachPolicy",
        "iot:AttachThingPrincipal",
        "iot:UpdateCertificate",
        "iot:ListThingPrincipals",
        "iot:DescribeCertificate",
        # AWS IoT: revoke, compensation, reconcile
        "iot:DetachThingPrincipal",
        "iot:DetachPolicy",
        "iot:DeleteCertificate",
        "iot:ListTargetsForPolicy",
        # AWS IoT: products (bootstrap_aws, configure_product, issuance, reconcile); GetPolicy is also
        # the readiness probe
        "iot:GetPolicy",
        "iot:CreatePolicy",
        "iot:DescribeThingType",
        "iot:CreateThingType",
        "iot:DescribeThingGroup",
        "iot:CreateThingGroup",
        "iot:AddThingToThingGroup",
        "iot:DescribeThing",
        "iot:ListThingGroupsForThing",
        # DynamoDB: the association table (and the reference CVM's table for import_legacy_table)
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:Scan",
        "dynamodb:DescribeTable",
        "dynamodb:CreateTable",
    }
)
# Only with CVM_AUDIT_ANCHOR_SINK=s3://…: anchors written under Object Lock (setting an object's retention
# takes s3:PutObjectRetention beside s3:PutObject), and listed back to verify (ListObjectsV2).
IAM_ACTIONS_ANCHORS_S3: frozenset[str] = frozenset({"s3:PutObject", "s3:PutObjectRetention", "s3:ListBucket"})


def clients_reset() -> None:
    """Forget cached clients and the endpoint (tests switch between moto and servers)."""
    _iot_client.cache_clear()
    _iot_probe_client.cache_clear()
    _dynamodb_client.cache_clear()
    _s3_client.cache_clear()
    iot_data_endpoint.cache_clear()


__all__ = [
    "IAM_ACTIONS",
    "IAM_ACTIONS_ANCHORS_S3",
    "THROTTLE_RETRY_AFTER",
    "AwsError",
    "AwsRejected",
    "AwsUnavailable",
    "CertificateInfo",
    "NewCertificate",
    "ThingInfo",
    "anchor_put",
    "anchors_list",
    "association_delete",
    "association_put",
    "association_replace",
    "certificate_activate",
    "certificate_create",
    "certificate_describe",
    "certificate_discard",
    "certificate_discard_quietly",
    "certificate_provision",
    "certificate_provision_admit",
    "certificate_revoke",
    "clients_reset",
    "device_policy_document",
    "dynamodb_client",
    "iot_client",
    "iot_data_endpoint",
    "iot_probe",
    "policy_attach",
    "policy_detach",
    "policy_ensure",
    "policy_targets",
    "table_ensure",
    "table_scan",
    "thing_attach",
    "thing_certificates",
    "thing_describe",
    "thing_ensure",
    "thing_group_add",
    "thing_group_ensure",
    "thing_type_ensure",
    "thing_update",
]
