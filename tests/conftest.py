"""Shared fixtures: moto-backed AWS, devices in every state, fault injection at the boto3 boundary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.cache import cache
from django.core.management import call_command
from moto import mock_aws
from rest_framework.test import APIClient

from provisioning import aws, services
from provisioning.models import Device
from scripts.emulator import apply_fixes

VEND_URL = "/api/v1/certificates"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # PBKDF2 with Django's work factor costs ~0.3 s per password; tests are not about that.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _requests_built_as_in_production(monkeypatch) -> None:
    # The test client builds Django's plain WSGIRequest; the portal's WSGI handler builds its own.
    from provisioning.middleware import PortalRequest

    monkeypatch.setattr("django.test.client.WSGIRequest", PortalRequest)


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@dataclass
class AwsView:
    """What AWS IoT and DynamoDB hold, read straight from moto for assertions."""

    iot: Any
    dynamodb: Any

    def thing_certificates(self, thing_name: str) -> list[dict[str, Any]]:
        principals = self.iot.list_thing_principals(thingName=thing_name)["principals"]
        return [
            self.iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])["certificateDescription"]
            for arn in principals
        ]

    def all_certificates(self) -> list[dict[str, Any]]:
        return self.iot.list_certificates()["certificates"]

    def active_certificates(self) -> list[dict[str, Any]]:
        return [c for c in self.all_certificates() if c["status"] == "ACTIVE"]

    def policies_of(self, certificate_arn: str) -> list[str]:
        return [p["policyName"] for p in self.iot.list_attached_policies(target=certificate_arn)["policies"]]

    def thing(self, thing_name: str) -> dict[str, Any]:
        return self.iot.describe_thing(thingName=thing_name)


@pytest.fixture
def aws_mock() -> Iterator[AwsView]:
    """In-process moto with the policy and table `bootstrap_aws` creates."""
    apply_fixes()
    with mock_aws():
        aws.clients_reset()
        call_command("bootstrap_aws", stdout=open("/dev/null", "w"))  # noqa: SIM115
        yield AwsView(iot=aws.iot_client(), dynamodb=aws.dynamodb_client())
    aws.clients_reset()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class Fault:
    operation: str
    calls: int = 0
    active: bool = True

    def heal(self) -> None:
        self.active = False


def inject_iot_fault(
    operation: str,
    *,
    code: str = "ServiceUnavailableException",
    status: int = 503,
    times: int = 10**6,
    reached_aws: bool = False,
) -> tuple[Fault, Callable[[], None]]:
    """Make one AWS IoT operation fail with an HTTP error; returns the fault and a function removing it.

    Registered first on `before-send`, so botocore's real retry logic runs against it. With
    `reached_aws=True` AWS (moto) carries the call out and only the answer is lost, as with a read
    timeout; otherwise the call never arrives.
    """
    fault = Fault(operation)

    def handler(**kwargs: Any) -> AWSResponse | None:
        if not fault.active or fault.calls >= times:
            return None
        fault.calls += 1
        body = json.dumps({"message": "injected failure", "__type": code}).encode()
        headers = {"x-amzn-ErrorType": code, "Content-Type": "application/json"}
        request = kwargs["request"]
        response = AWSResponse(request.url, status, headers, _Raw(body))
        if not reached_aws:
            # Every before-send handler runs; moto's matches on the URL, so point it elsewhere.
            request.url = "https://fault-injected.invalid/"
        return response

    event = f"before-send.iot.{operation}"
    events = aws.iot_client().meta.events
    events.register_first(event, handler)
    return fault, lambda: events.unregister(event, handler)


@pytest.fixture
def aws_fault(aws_mock: AwsView) -> Iterator[Callable[..., Fault]]:
    """Install faults with `inject_iot_fault`; all are removed after the test."""
    removers: list[Callable[[], None]] = []

    def install(operation: str, **kwargs: Any) -> Fault:
        fault, remove = inject_iot_fault(operation, **kwargs)
        removers.append(remove)
        return fault

    yield install
    for remove in removers:
        remove()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@dataclass
class ProvisionedDevice:
    serial: str
    token: str

    @property
    def device(self) -> Device:
        return Device.objects.get(serial=self.serial)


@pytest.fixture
def make_device(db: None) -> Callable[..., ProvisionedDevice]:
    """Register a serial and, unless told otherwise, issue it a token (returned in plaintext)."""
    counter = iter(range(1, 10**6))

    def make(serial: str | None = None, *, product: str = "sensor", with_token: bool = True, ttl_days: int = 90):
        serial = serial or f"SN-{next(counter):06d}"
        services.devices_import(rows=[services.ImportRow(line=2, serial=serial, product=product)], actor="test")
        token = ""
        if with_token:
            token = services.tokens_issue(serials=[serial], actor="test", ttl_days=ttl_days)[0].token
        return ProvisionedDevice(serial=serial, token=token)

    return make


def make_csr(common_name: str, *, key: Any | None = None) -> tuple[str, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


@pytest.fixture(scope="session")
def rsa_1024_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test


def vend(api: APIClient, serial: str, token: str, **extra: Any) -> Any:
    return api.post(VEND_URL, {"serial": serial, "token": token, **extra}, format="json")


def _staff(username: str, group: str | None = None, **extra: Any):
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group, User

    if not Group.objects.filter(name="factory").exists():
        # A transactional test flushed the groups the migration made; make them again the same way.
        importlib.import_module("provisioning.migrations.0004_roles").create_roles(apps, None)
        importlib.import_module("provisioning.migrations.0011_staff_api_webhooks").grant(apps, None)
    user = User.objects.create_user(username=username, password="a-long-test-password-1", is_staff=True, **extra)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def factory_user(db: None):
    return _staff("fiona", "factory")


@pytest.fixture
def security_user(db: None):
    return _staff("sam", "security")


@pytest.fixture
def auditor_user(db: None):
    return _staff("aude", "auditor")


@pytest.fixture
def outsider_user(db: None):
    return _staff("otto")


@pytest.fixture
def superuser(db: None):
    return _staff("root", is_superuser=True)


@pytest.fixture
def as_user(client):
    """Log a user into the Django test client (django-axes needs a request for password logins)."""

    def login(user):
        client.force_login(user)
        return client

    return login
