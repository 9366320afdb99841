"""Shared fixtures: moto-backed AWS, devices in every state, fault injection at the boto3 boundary.

What AWS holds is read with `tests.awsstate`; faults come from `tests.faults`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection
from django.db.backends.signals import connection_created
from django.dispatch import receiver
from moto import mock_aws
from rest_framework.test import APIClient

from provisioning import aws, services
from provisioning.models import Device
from scripts.emulator import apply_fixes

from . import awsstate
from .awsstate import AwsState
from .faults import Fault, inject_fault

VEND_URL = "/api/v1/certificates"

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # PBKDF2 with Django's work factor costs ~0.3 s per password; tests are not about that.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@receiver(connection_created)
def _sqlite_commits_without_fsync(sender: Any, connection: Any, **kwargs: Any) -> None:
    # In WAL mode SQLite's default (synchronous=FULL) waits for an fsync of the log on every commit,
    # ~5 ms here, and the transactional tests commit thousands of times. NORMAL syncs at checkpoints
    # only: the same locking and the same transactions, durable against a crash of the process (not of
    # the machine, which a test database does not need).
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous=NORMAL")


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


class _Boto3WithOneSession:
    """`boto3` as provisioning.aws.clients sees it under test: every `boto3.session.Session()` is the suite's one.

    The portal builds each client from a new session, which loads botocore's service models again: about
    0.1 s per client pair, for every test, against a few milliseconds from one shared session.
    """

    session = SimpleNamespace(Session=awsstate.session)


class _MotoRsaKeys:
    """`rsa` as moto's IoT models see it under test: RSA-2048 keys made once per run, handed out in turn.

    moto makes a new RSA-2048 key for every certificate (CreateKeysAndCertificate, and to sign one from a
    CSR), ~50 ms of CPU each and several hundred of them in a run. Each test starts again from the first
    key of the pool, which grows when a test needs more, so the keys within one test are all different,
    as AWS's are; a key seen in an earlier test is only ever met again in a moto that starts empty.
    """

    _pool: ClassVar[list[rsa.RSAPrivateKey]] = []
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.handed_out = 0

    def generate_private_key(self, public_exponent: int, key_size: int, backend: Any = None) -> rsa.RSAPrivateKey:
        if (public_exponent, key_size) != (65537, 2048):
            return rsa.generate_private_key(public_exponent=public_exponent, key_size=key_size)
        with self._lock:
            if self.handed_out == len(self._pool):
                self._pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
            self.handed_out += 1
            return self._pool[self.handed_out - 1]

    def __getattr__(self, name: str) -> Any:
        return getattr(rsa, name)


@pytest.fixture
def aws_mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsState]:
    """In-process moto with the policy and table `bootstrap_aws` creates; what AWS holds, to assert on."""
    apply_fixes()
    monkeypatch.setattr(aws.clients, "boto3", _Boto3WithOneSession)
    monkeypatch.setattr("moto.iot.models.rsa", _MotoRsaKeys())
    with mock_aws():
        # New clients for the portal in each test: a fault's hooks and botocore's retry quota live in
        # a client. The test's own clients (AwsState) come from the same session but are not the portal's.
        aws.clients_reset()
        # What bootstrap_aws makes, without the products it reads from the database (no database here).
        aws.policy_ensure(policy_name=django_settings.CVM_IOT_POLICY_NAME)
        aws.table_ensure(table_name=django_settings.CVM_DYNAMODB_TABLE)
        yield AwsState.connect()
    aws.clients_reset()


@pytest.fixture
def aws_fault(aws_mock: AwsState) -> Iterator[Callable[..., Fault]]:
    """Install faults with `tests.faults.inject_fault` (same arguments); all are removed after the test."""
    installed: list[Fault] = []

    def install(operation: str | None, **kwargs: Any) -> Fault:
        fault = inject_fault(operation, **kwargs)
        installed.append(fault)
        return fault

    yield install
    for fault in installed:
        fault.remove()


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


def run_together(count: int, task: Callable[[int], T]) -> list[T]:
    """`task(0)` ... `task(count - 1)`, each in a thread of its own, released at the same instant.

    Returns the results in order and raises what a task raised. Each thread closes the database
    connection Django opened for it, so none outlives the test (PostgreSQL will not drop a test
    database that still has connections).
    """
    barrier = threading.Barrier(count)

    def one(index: int) -> T:
        barrier.wait()
        try:
            return task(index)
        finally:
            connection.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def _staff(username: str, group: str | None = None, **extra: Any):
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group, User

    if not Group.objects.filter(name="factory").exists():
        # A transactional test flushed the groups the migration made; make them again the same way.
        importlib.import_module("provisioning.migrations.0004_roles").create_roles(apps, None)
        importlib.import_module("provisioning.migrations.0012_staff_api_webhooks").grant(apps, None)
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
