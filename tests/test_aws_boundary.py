"""The AWS boundary and the IAM policy of the portal's role.

While the portal does everything it does — bootstrap, vend in both key modes (over a thing that already
holds certificates, and over one AWS refuses to recreate), revoke, reset, rotate, confirm and roll back a
rotation, the DynamoDB mirror, reconcile with repairs, readiness, the reference-CVM import, audit anchors
in S3 — every request any of its clients sends is recorded with its parameters. Each must be allowed by
`deploy/iam-policy.json` (AWS IoT, DynamoDB) or `deploy/iam-policy-audit-anchors.json` (S3, optional):
the action and the resource the call names. The policy must name exactly the actions called, with no
wildcard action, and `IAM_ACTIONS` must agree with it. A new AWS call fails here until the policy allows it.
"""

from __future__ import annotations

import ast
import fnmatch
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.management import call_command
from moto import mock_aws

from provisioning import aws, readiness
from provisioning.aws import clients
from provisioning.services import device_reset, device_revoke
from scripts.emulator import apply_fixes

from .conftest import make_csr, vend
from .test_rotation import confirm, rotate

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
AWS_PACKAGE = Path(aws.__file__).parent
POLICY = ROOT / "deploy" / "iam-policy.json"
ANCHORS_POLICY = ROOT / "deploy" / "iam-policy-audit-anchors.json"
# moto's account and the suite's region stand in for the policy's placeholders.
PLACEHOLDERS = {"REGION": "us-east-1", "ACCOUNT_ID": "123456789012"}
# AWS IoT offers no resource-level permission for these: their statement's Resource is "*".
WITHOUT_RESOURCE_LEVEL = {"iot:CreateCertificateFromCsr", "iot:CreateKeysAndCertificate", "iot:DescribeEndpoint"}
LEGACY_TABLE = "DeviceInfo"
ANCHOR_SINK = "s3://cvm-audit/anchors/"


@pytest.fixture(autouse=True)
def _fresh_probe():
    readiness.readiness_forget()
    yield
    readiness.readiness_forget()


class Recorder:
    """Every request the portal's clients build: (service, operation, parameters as the caller gave them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.service_model.service_name, model.name, dict(params)))


def iam_actions(service: str, operation: str, params: dict[str, Any]) -> set[str]:
    """The IAM actions a call needs: its own name, except where AWS authorizes it otherwise."""
    if (service, operation) == ("s3", "ListObjectsV2"):
        return {"s3:ListBucket"}
    if (service, operation) == ("s3", "PutObject") and "ObjectLockMode" in params:
        # S3 demands a second permission to set a retention period on the object it writes.
        return {"s3:PutObject", "s3:PutObjectRetention"}
    return {f"{service}:{operation}"}


def resources(service: str, operation: str, params: dict[str, Any]) -> set[str]:
    """The ARNs a call names (moto's account and region); {"*"} for a call that names none."""
    region, account = PLACEHOLDERS["REGION"], PLACEHOLDERS["ACCOUNT_ID"]
    iot = f"arn:aws:iot:{region}:{account}"
    found = set()
    if service == "iot":
        if "thingName" in params:
            found.add(f"{iot}:thing/{params['thingName']}")
        if "policyName" in params:
            found.add(f"{iot}:policy/{params['policyName']}")
        if "thingTypeName" in params:
            found.add(f"{iot}:thingtype/{params['thingTypeName']}")
        if "thingGroupName" in params:
            found.add(f"{iot}:thinggroup/{params['thingGroupName']}")
        if "certificateId" in params:
            found.add(f"{iot}:cert/{params['certificateId']}")
        for name in ("principal", "target"):
            if name in params:
                found.add(params[name])
    elif service == "dynamodb" and "TableName" in params:
        found.add(f"arn:aws:dynamodb:{region}:{account}:table/{params['TableName']}")
    elif service == "s3":
        found.add(f"arn:aws:s3:::{params['Bucket']}" + (f"/{params['Key']}" if "Key" in params else ""))
    return found or {"*"}


def load_policy(path: Path) -> dict[str, Any]:
    text = path.read_text()
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _conditions_hold(statement: dict[str, Any], params: dict[str, Any]) -> bool:
    known = {"s3:prefix": params.get("Prefix", "")}
    for operator, tests in statement.get("Condition", {}).items():
        assert operator == "StringLike", f"{statement['Sid']}: this test evaluates StringLike only"
        for key, patterns in tests.items():
            if not any(fnmatch.fnmatchcase(known[key], pattern) for pattern in _as_list(patterns)):
                return False
    return True


def allowed(policy: dict[str, Any], action: str, arns: set[str], params: dict[str, Any]) -> bool:
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow" or action not in _as_list(statement["Action"]):
            continue
        patterns = _as_list(statement["Resource"])
        if any(fnmatch.fnmatchcase(arn, pattern) for arn in arns for pattern in patterns) and _conditions_hold(
            statement, params
        ):
            return True
    return False


def policy_actions(policy: dict[str, Any]) -> set[str]:
    return {action for statement in policy["Statement"] for action in _as_list(statement["Action"])}


@pytest.fixture(scope="module")
def workload(django_db_setup, django_db_blocker) -> list[tuple[str, str, dict[str, Any]]]:
    """Everything the portal does to AWS, once for the module; the calls it sent."""
    recorder = Recorder()
    build_client = clients._client

    def recorded_client(*args: Any, **kwargs: Any) -> Any:
        client = build_client(*args, **kwargs)
        client.meta.events.register("before-parameter-build", recorder)
        return client

    with django_db_blocker.unblock(), mock_aws(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(clients, "_client", recorded_client)
        apply_fixes()
        aws.clients_reset()
        _run_workload(patch)
    aws.clients_reset()
    return recorder.calls


def _run_workload(patch: pytest.MonkeyPatch) -> None:
    from rest_framework.test import APIClient

    from provisioning import services
    from provisioning.models import Device

    api = APIClient()
    quiet = {"stdout": open("/dev/null", "w")}  # noqa: SIM115
    iot, dynamodb = boto3.client("iot"), boto3.client("dynamodb")

    def make_device(serial: str) -> str:
        services.devices_import(rows=[services.ImportRow(line=2, serial=serial, product="boundary")], actor="test")
        return services.tokens_issue(serials=[serial], actor="test", ttl_days=1)[0].token

    call_command("bootstrap_aws", **quiet)
    assert api.get("/api/v1/ready").status_code == 200

    # A product with its own policy, a thing type and thing groups: made in AWS IoT, used at issuance,
    # and compared by reconcile below.
    call_command(
        "configure_product", "shaped", "--iot-policy", "cvm-device-policy-shaped", "--thing-type", "shaped-type",
        "--thing-group", "shaped-a", "shaped-b", **quiet,
    )  # fmt: skip
    services.devices_import(rows=[services.ImportRow(line=2, serial="SN-SHAPED", product="shaped")], actor="test")
    shaped_token = services.tokens_issue(serials=["SN-SHAPED"], actor="test", ttl_days=1)[0].token
    assert vend(api, "SN-SHAPED", shaped_token).status_code == 201

    # Vend without a CSR; then with one, over a thing that already holds an ACTIVE certificate (revoked)
    # and one never activated (deleted), so issuance lists, describes, revokes, detaches and deletes.
    assert vend(api, "SN-PLAIN", make_device("SN-PLAIN")).status_code == 201
    token = make_device("SN-CSR")
    iot.create_thing(thingName="SN-CSR")
    for active in (True, False):
        stray = iot.create_keys_and_certificate(setAsActive=active)
        iot.attach_thing_principal(thingName="SN-CSR", principal=stray["certificateArn"])
    assert vend(api, "SN-CSR", token, csr=make_csr("SN-CSR")[0]).status_code == 201

    # Rotation: rotate and confirm; rotate again and let the grace period lapse (rolled back).
    key = ec.generate_private_key(ec.SECP256R1())
    assert vend(api, "SN-ROT", make_device("SN-ROT"), csr=make_csr("SN-ROT", key=key)[0]).status_code == 201
    response, new_key, _ = rotate(api, "SN-ROT", key)
    assert response.status_code == 201, response.json()
    assert confirm(api, "SN-ROT", new_key).status_code == 200
    response, _, _ = rotate(api, "SN-ROT", new_key)
    assert response.status_code == 201, response.json()
    patch.setattr(settings, "CVM_ROTATION_GRACE_SECONDS", 0)
    call_command("expire_rotations", **quiet)

    device_revoke(serial="SN-PLAIN", reason="test", actor="test")
    device_reset(serial="SN-CSR", actor="test")

    # Drift for reconcile to repair: a stray ACTIVE certificate, a table item nobody knows.
    stray = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="SN-PLAIN", principal=stray["certificateArn"])
    aws.association_replace(table_name=settings.CVM_DYNAMODB_TABLE, item={"productId": "SN-GHOST", "version": 1})
    call_command("sync_dynamodb", "--once", **quiet)
    call_command("reconcile", "--fix", **quiet)

    # A thing that exists with other attributes: AWS answers CreateThing with ResourceAlreadyExists and
    # the portal updates it (moto silently replaces it instead).
    iot.create_thing(thingName="SN-LATE", attributePayload={"attributes": {"owner": "an earlier tool"}})
    portal_iot = aws.iot_client()
    portal_iot.meta.events.register_first("before-call.iot.CreateThing", _already_exists)
    assert vend(api, "SN-LATE", make_device("SN-LATE")).status_code == 201
    portal_iot.meta.events.unregister("before-call.iot.CreateThing", _already_exists)

    # The reference CVM's table, imported.
    dynamodb.create_table(
        TableName=LEGACY_TABLE,
        AttributeDefinitions=[{"AttributeName": "serialNumber", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "serialNumber", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(
        TableName=LEGACY_TABLE, Item={"serialNumber": {"S": "REF-1"}, "deviceToken": {"S": "plain-token-ref-0001"}}
    )
    call_command("import_legacy_table", "--table", LEGACY_TABLE, **quiet)
    assert Device.objects.filter(serial="REF-1").exists()

    # Audit anchors in S3 under Object Lock, written and read back.
    boto3.client("s3").create_bucket(Bucket="cvm-audit", ObjectLockEnabledForBucket=True)
    call_command("anchor_audit", "--to", ANCHOR_SINK, **quiet)
    call_command("verify_audit", "--anchors", ANCHOR_SINK, **quiet)

    readiness.readiness_forget()
    assert api.get("/api/v1/ready").status_code == 200


class _HttpAnswer:
    status_code = 409


def _already_exists(**_: Any) -> tuple[_HttpAnswer, dict[str, Any]]:
    # A before-call handler that answers is botocore's own way to short-circuit a call.
    return _HttpAnswer(), {"Error": {"Code": "ResourceAlreadyExistsException", "Message": "exists"}}


def test_only_the_aws_package_imports_boto3():
    for path in Path(aws.__file__).parent.parent.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        if {"boto3", "botocore"} & imported:
            assert path.parent == AWS_PACKAGE, f"{path} talks to AWS outside the boundary"


def test_every_call_the_portal_sends_is_allowed_by_the_iam_policy(workload):
    policies = {"iot": load_policy(POLICY), "dynamodb": load_policy(POLICY), "s3": load_policy(ANCHORS_POLICY)}
    refused = set()
    for service, operation, params in workload:
        assert service in policies, f"{service}:{operation}: the portal calls a service no policy file covers"
        arns = resources(service, operation, params)
        for action in iam_actions(service, operation, params):
            if not allowed(policies[service], action, arns, params):
                refused.add(f"{action} on {sorted(arns)}")
    assert refused == set(), "sent by the portal but not allowed by deploy/iam-policy*.json"


def test_the_iam_policy_names_exactly_the_actions_called_and_no_wildcard(workload):
    called = {action for call in workload for action in iam_actions(*call)}
    policy, anchors = load_policy(POLICY), load_policy(ANCHORS_POLICY)

    assert policy_actions(policy) == {a for a in called if a.startswith(("iot:", "dynamodb:"))}
    assert policy_actions(anchors) == {a for a in called if a.startswith("s3:")}
    assert policy_actions(policy) == aws.IAM_ACTIONS
    assert policy_actions(anchors) == aws.IAM_ACTIONS_ANCHORS_S3
    for statement in policy["Statement"] + anchors["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all("*" not in action and "?" not in action for action in _as_list(statement["Action"]))


def test_the_iam_policy_scopes_every_resource_aws_lets_it_scope():
    policy = load_policy(POLICY)
    region, account = PLACEHOLDERS["REGION"], PLACEHOLDERS["ACCOUNT_ID"]
    table = f"arn:aws:dynamodb:{region}:{account}:table/{settings.CVM_DYNAMODB_TABLE}"
    legacy = f"arn:aws:dynamodb:{region}:{account}:table/{LEGACY_TABLE}"
    for statement in policy["Statement"]:
        actions, patterns = set(_as_list(statement["Action"])), _as_list(statement["Resource"])
        if patterns == ["*"]:
            assert actions <= WITHOUT_RESOURCE_LEVEL, f"{statement['Sid']}: unscoped, though AWS can scope it"
            continue
        for pattern in patterns:
            if pattern.startswith("arn:aws:dynamodb:"):
                assert pattern in (table, f"{table}/index/*", legacy), pattern
            else:
                kind = pattern.removeprefix(f"arn:aws:iot:{region}:{account}:").split("/")[0]
                assert kind in {"thing", "cert", "policy", "thinggroup", "thingtype"}, pattern
        assert f"arn:aws:iot:{region}:{account}:policy/*" not in patterns, "policies are scoped by name"


def test_the_emulator_answers_concurrent_calls_as_aws_would():
    """moto's backends have no lock of their own: a DescribeThing iterating the things while another
    thread's CreateThing adds one fails ("OrderedDict mutated during iteration"), a 500 AWS never gives.
    With the emulator's fixes each call is handled whole; concurrent vends in the tests and against the
    emulator (`make run`) rely on it."""
    import threading

    apply_fixes()
    failures: list[str] = []
    with mock_aws():
        iot = boto3.client("iot", region_name="us-east-1")

        def things(worker: int) -> None:
            for i in range(100):
                try:
                    iot.create_thing(thingName=f"race-{worker}-{i}")
                    iot.describe_thing(thingName=f"race-{worker}-{i}")
                except Exception as exc:  # any failure is the finding
                    failures.append(repr(exc)[:200])

        threads = [threading.Thread(target=things, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert failures == []
