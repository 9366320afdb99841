"""schemathesis drives the device API from its own OpenAPI document: no 5xx, answers match the schema,
malformed data is rejected."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cvm_portal.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/schema?format=json", application)
# Data that breaks the schema must be refused; a body past 64 KiB is refused with 413 before it is read,
# which schemathesis does not count as a refusal unless told.
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]


@schema.parametrize()
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@pytest.mark.django_db(transaction=True)
def test_api_conforms_to_its_schema(case, aws_mock):
    # "Schema-valid data is accepted" cannot hold here: the schema says a CSR is a string, but only a
    # well-formed, correctly signed request for the right serial is accepted (a 400 otherwise), and a
    # random serial and token are refused (403). Every other check runs, negative-data rejection included.
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500 or response.status_code == 503


@schema.include(tag="staff").parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@pytest.mark.django_db(transaction=True)
def test_staff_api_with_a_key_conforms_to_its_schema(case, aws_mock):
    """The staff calls again, with a security key (the role that may call all but one of them)."""
    import uuid

    from provisioning.services.apikeys import api_key_create

    key = api_key_create(name=f"fuzz-{uuid.uuid4().hex[:12]}", role="security", actor="test").key
    response = case.call_and_validate(
        headers={"Authorization": f"Api-Key {key}"}, excluded_checks=[positive_data_acceptance]
    )
    assert response.status_code < 500 or response.status_code == 503
