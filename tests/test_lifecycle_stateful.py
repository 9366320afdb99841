"""A hypothesis state machine plays the whole device lifecycle and checks the fleet's invariants
after every step: imports, tokens, right and wrong vends in both key modes, racing vends, revokes,
resets, and AWS failing at random steps.

Invariants: at most one ACTIVE certificate per thing in AWS IoT; a token issues at most one
certificate; the database and AWS IoT agree on what is active; the audit chain verifies.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from rest_framework.test import APIClient

from provisioning import services
from provisioning.audit import audit_chain_pending, audit_verify
from provisioning.models import Device, DeviceState

from .awsstate import AwsState
from .conftest import make_csr, run_together, vend
from .faults import inject_fault

pytestmark = pytest.mark.django_db(transaction=True)

# What the runs did, so the test can show it exercised issuance and failure, not only refusals.
OUTCOMES: Counter[str] = Counter()

AWS_STEPS = ["CreateThing", "CreateKeysAndCertificate", "AttachPolicy", "AttachThingPrincipal", "UpdateCertificate"]


class DeviceLifecycle(RuleBasedStateMachine):
    serials = Bundle("serials")

    def __init__(self, aws: AwsState) -> None:
        super().__init__()
        self.aws = aws
        self.prefix = f"HS{uuid.uuid4().hex[:6]}-"
        self.api = APIClient()
        self.tokens: dict[str, str] = {}
        self.certificates_per_token: Counter[str] = Counter()

    def record(self, token: str, status: int) -> None:
        OUTCOMES[f"vend {status}"] += 1
        if status == 201:
            self.certificates_per_token[token] += 1

    @rule(target=serials, n=st.integers(0, 5))
    def import_serial(self, n: int) -> str:
        serial = f"{self.prefix}{n}"
        services.devices_import(rows=[services.ImportRow(line=2, serial=serial, product="hs")], actor="hs")
        return serial

    @rule(serial=serials)
    def issue_token(self, serial: str) -> None:
        try:
            self.tokens[serial] = services.tokens_issue(serials=[serial], actor="hs")[0].token
        except services.ServiceError:
            assert Device.objects.get(serial=serial).state in (DeviceState.ACTIVE, DeviceState.REVOKED)

    @rule(serial=serials, right_token=st.booleans(), with_csr=st.booleans())
    def vend(self, serial: str, right_token: bool, with_csr: bool) -> None:
        token = self.tokens.get(serial, "no-token") if right_token else "a-wrong-token"
        extra = {"csr": make_csr(serial)[0]} if with_csr else {}
        response = vend(self.api, serial, token, **extra)
        assert response.status_code in (201, 403), response.content
        self.record(token, response.status_code)

    @rule(serial=serials)
    def racing_vends(self, serial: str) -> None:
        token = self.tokens.get(serial, "no-token")
        statuses = run_together(4, lambda _: vend(APIClient(), serial, token).status_code)
        assert set(statuses) <= {201, 403, 409}, statuses
        for status in statuses:
            self.record(token, status)

    @rule(serial=serials, step=st.sampled_from(AWS_STEPS))
    def vend_while_aws_fails(self, serial: str, step: str) -> None:
        token = self.tokens.get(serial, "no-token")
        fault = inject_fault(step)
        try:
            response = vend(self.api, serial, token)
        finally:
            fault.remove()
        assert response.status_code in (403, 503), response.content
        OUTCOMES[f"vend with AWS failing {response.status_code}"] += 1
        if response.status_code == 503:
            assert fault.calls > 0
            assert Device.objects.get(serial=serial).state == DeviceState.TOKEN_ISSUED, "the token stays valid"

    @rule(serial=serials)
    def revoke(self, serial: str) -> None:
        try:
            services.device_revoke(serial=serial, reason="hs", actor="hs")
        except services.ServiceError:
            assert Device.objects.get(serial=serial).state != DeviceState.ACTIVE

    @rule(serial=serials)
    def reset(self, serial: str) -> None:
        try:
            self.tokens[serial] = services.device_reset(serial=serial, actor="hs").token
        except services.ServiceError:
            assert Device.objects.get(serial=serial).state not in (DeviceState.ACTIVE, DeviceState.REVOKED)

    @invariant()
    def each_token_issues_at_most_one_certificate(self) -> None:
        assert all(count <= 1 for count in self.certificates_per_token.values()), self.certificates_per_token

    @invariant()
    def database_and_aws_iot_agree(self) -> None:
        for device in Device.objects.filter(serial__startswith=self.prefix).select_related("current_certificate"):
            active = [c["certificateId"] for c in self.aws.thing_certificates(device.serial) if c["status"] == "ACTIVE"]
            assert len(active) <= 1, f"{device.serial} has {len(active)} ACTIVE certificates"
            if device.state == DeviceState.ACTIVE:
                assert active == [device.current_certificate.certificate_id]
            else:
                assert active == [], f"{device.serial} is {device.state} but AWS holds an ACTIVE certificate"

    @invariant()
    def audit_chain_verifies(self) -> None:
        # The worker's sequencer chains events as they commit; under a slow machine this run outlasts
        # the minute verify_audit allows an event to wait, so it chains them here as the worker would.
        audit_chain_pending()
        assert audit_verify() == []


@override_settings(CVM_FAILED_TOKENS_PER_SERIAL=10**6, CVM_FAILED_TOKENS_PER_ADDRESS=10**6)
def test_device_lifecycle_invariants(aws_mock):
    OUTCOMES.clear()
    run_state_machine_as_test(
        lambda: DeviceLifecycle(aws_mock),
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,  # the same runs every time: CI never sees a sequence nobody could replay
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert OUTCOMES["vend 201"] > 0, OUTCOMES
    assert OUTCOMES["vend with AWS failing 503"] > 0, OUTCOMES
