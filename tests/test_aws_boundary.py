"""The AWS boundary: every operation the portal sends is one `IAM_ACTIONS` names, and it names no other."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from moto import mock_aws

from provisioning import aws
from provisioning.services import device_reset, device_revoke
from scripts.emulator import apply_fixes

from .conftest import make_csr, vend

pytestmark = pytest.mark.django_db(transaction=True)

AWS_PACKAGE = Path(aws.__file__).parent


class Recorder:
    """Every operation sent by the portal's clients, as `service:Operation` (botocore's before-call)."""

    def __init__(self) -> None:
        self.sent: set[str] = set()

    def __call__(self, model: Any = None, **_: Any) -> None:
        self.sent.add(f"{model.service_model.service_name}:{model.name}")


def test_only_the_clients_module_imports_boto3():
    for path in Path(aws.__file__).parent.parent.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        if {"boto3", "botocore"} & imported:
            assert path.parent == AWS_PACKAGE, f"{path} talks to AWS outside the boundary"


def test_every_operation_sent_is_an_iam_action_and_every_iam_action_is_sent(api, make_device, tmp_path):
    apply_fixes()
    recorder = Recorder()
    with mock_aws():
        aws.clients_reset()
        aws.iot_client().meta.events.register("before-call", recorder)
        aws.dynamodb_client().meta.events.register("before-call", recorder)
        iot = aws.iot_client()

        call_command("bootstrap_aws", stdout=open("/dev/null", "w"))  # noqa: SIM115

        plain = make_device("SN-PLAIN")
        assert vend(api, plain.serial, plain.token).status_code == 201
        # A product with its own policy, a thing type and groups: made in AWS IoT, used at issuance.
        call_command(
            "configure_product", "shaped", "--iot-policy", "shaped-policy", "--thing-type", "shaped-type",
            "--thing-group", "shaped-a", "shaped-b", stdout=open("/dev/null", "w"),  # noqa: SIM115
        )  # fmt: skip
        shaped = make_device("SN-SHAPED", product="shaped")
        assert vend(api, shaped.serial, shaped.token).status_code == 201

        # A thing that already holds certificates: one ACTIVE (revoked) and one never activated
        # (deleted), so issuance lists, describes, revokes, detaches and deletes.
        with_csr = make_device("SN-CSR")
        iot.create_thing(thingName="SN-CSR")
        for active in (True, False):
            stray = iot.create_keys_and_certificate(setAsActive=active)
            iot.attach_thing_principal(thingName="SN-CSR", principal=stray["certificateArn"])
        assert vend(api, with_csr.serial, with_csr.token, csr=make_csr("SN-CSR")[0]).status_code == 201

        device_revoke(serial="SN-PLAIN", reason="test", actor="test")
        device_reset(serial="SN-CSR", actor="test")

        # Drift for reconcile to repair: a stray ACTIVE certificate, a table item nobody knows.
        stray = iot.create_keys_and_certificate(setAsActive=True)
        iot.attach_thing_principal(thingName="SN-PLAIN", principal=stray["certificateArn"])
        aws.association_replace(table_name=settings.CVM_DYNAMODB_TABLE, item={"productId": "SN-GHOST", "version": 1})
        call_command("sync_dynamodb", "--once", stdout=open("/dev/null", "w"))  # noqa: SIM115
        call_command("reconcile", "--fix", stdout=open("/dev/null", "w"))  # noqa: SIM115

        # A thing that exists with other attributes: AWS answers CreateThing with
        # ResourceAlreadyExists and the portal updates it (moto silently replaces it instead).
        iot.create_thing(thingName="SN-LATE", attributePayload={"attributes": {"owner": "an earlier tool"}})
        iot.meta.events.register_first("before-call.iot.CreateThing", _already_exists)
        late = make_device("SN-LATE")
        assert vend(api, late.serial, late.token).status_code == 201
        iot.meta.events.unregister("before-call.iot.CreateThing", _already_exists)
    aws.clients_reset()

    assert recorder.sent - aws.IAM_ACTIONS == set(), "called but not in IAM_ACTIONS"
    assert aws.IAM_ACTIONS - recorder.sent == set(), "in IAM_ACTIONS but never called"


class _HttpAnswer:
    status_code = 409


def _already_exists(**_: Any) -> tuple[_HttpAnswer, dict[str, Any]]:
    # A before-call handler that answers is botocore's own way to short-circuit a call.
    return _HttpAnswer(), {"Error": {"Code": "ResourceAlreadyExistsException", "Message": "exists"}}
