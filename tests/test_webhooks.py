"""Webhooks (SPEC §10): events written with their change, signed per Standard Webhooks, delivered at
least once and in order per device, retried with back-off, never carrying a secret. A local receiver on
127.0.0.1 stands in for the ERP or SIEM."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from provisioning import services
from provisioning.audit import NewEvent
from provisioning.models import AuditEvent, AuditKind, Device, WebhookDelivery, WebhookEndpoint
from provisioning.services.apikeys import api_key_create
from provisioning.services.common import events_record
from provisioning.services.webhooks import EVENT_TYPES, Subject, webhook_add, webhook_set_enabled
from provisioning.validators import InputInvalid
from provisioning.webhooks import deliveries_send, retry_delay, webhook_url_check, webhooks_follow

from .conftest import make_csr, vend
from .test_rotation import confirm, rotate

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records what it is sent and answers as told."""

    def __init__(self, tls: Any = None) -> None:
        self.received: list[tuple[dict[str, str], str]] = []
        self.failures_left = 0
        self.status = 204
        self.delay = 0.0
        self.location: str | None = None
        self.failing_serials: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # FACTS.md: otherwise ~40 ms per kept-alive call

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver.received.append((dict(self.headers.items()), body))
                if receiver.location:
                    self.send_response(307)
                    self.send_header("Location", receiver.location)
                elif receiver.failures_left or json.loads(body)["data"]["serial"] in receiver.failing_serials:
                    receiver.failures_left = max(0, receiver.failures_left - 1)
                    self.send_response(500)
                else:
                    self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_cert, tls.server_key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/hooks/cvm"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def types_for(self, serial: str) -> list[str]:
        return [e["type"] for e in self.events() if e["data"]["serial"] == serial]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def endpoint(receiver):
    return webhook_add(url=receiver.url, event_types=[], actor="test")


def deliver_all(**kwargs: Any) -> None:
    while deliveries_send(**kwargs).handled:
        pass


def register(serial: str) -> None:
    services.devices_import(rows=[services.ImportRow(line=1, serial=serial, product="meter")], actor="test")


# --- add_webhook ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--event", "certificate.issued", "certificate.revoked"],
        ["--event", "certificate.issued", "--event", "certificate.revoked"],
        ["--event", "certificate.revoked", "--event", "certificate.issued", "certificate.revoked"],
    ],
)
def test_add_webhook_keeps_every_event_type_in_both_spellings_and_prints_the_secret_last(argv):
    out = StringIO()
    call_command("add_webhook", "https://erp.example.com/hooks", *argv, stdout=out)

    secret = out.getvalue().strip().splitlines()[-1]
    endpoint = WebhookEndpoint.objects.get()
    assert secret.startswith("whsec_")
    assert endpoint.secret == secret
    assert endpoint.event_types == ["certificate.issued", "certificate.revoked"]
    assert AuditEvent.objects.filter(kind=AuditKind.WEBHOOK_ADDED).count() == 1


def test_add_webhook_without_events_subscribes_to_all():
    call_command("add_webhook", "https://siem.example.com/in", stdout=StringIO())
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == []
    assert all(endpoint.wants(t) for t in EVENT_TYPES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://erp.example.com/hooks"], "HTTPS only"),
        (["https://user:pw@erp.example.com/hooks"], "credentials"),
        (["ftp://erp.example.com/"], "not an https"),
        (["not a url"], "not an https"),
        (["https://erp.example.com:99999/"], "not a URL"),
        (["https://erp.example.com/", "--event", "device.exploded"], "invalid choice"),
        (["https://erp.example.com/", "--event"], "expected at least one argument"),
    ],
)
def test_add_webhook_refuses_bad_input_and_adds_nothing(argv, message):
    with pytest.raises(CommandError, match=message):
        call_command("add_webhook", *argv, stdout=StringIO())
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]:9/x", "https://erp.example.com"]
)
def test_loopback_may_use_plain_http(url):
    assert webhook_url_check(url) == url


# --- signing and delivery -------------------------------------------------------------------------


def test_a_delivery_is_signed_per_standard_webhooks_and_verifies_with_the_reference_library(receiver, endpoint):
    register("SN-1")

    deliver_all()

    [(headers, body)] = receiver.received
    payload = Webhook(endpoint.secret).verify(body, headers)
    assert payload["type"] == "device.registered"
    assert payload["data"] == {"serial": "SN-1", "thing_name": "SN-1", "product": "meter"}
    assert set(payload) == {"type", "timestamp", "data"}
    assert headers["webhook-id"].startswith("msg_")
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(body, headers)
    delivery = WebhookDelivery.objects.get()
    assert delivery.delivered_at is not None
    assert delivery.last_status == 204


def test_a_device_life_reaches_the_endpoint_in_order(api, aws_mock, make_device, receiver, endpoint):
    device = make_device("SN-LIFE")
    assert vend(api, device.serial, device.token).status_code == 201
    services.device_revoke(serial="SN-LIFE", reason="stolen", actor="test")
    token = services.device_reset(serial="SN-LIFE", actor="test", reason="found").token
    key = ec.generate_private_key(ec.SECP256R1())
    csr, _ = make_csr("SN-LIFE", key=key)
    assert vend(api, "SN-LIFE", token, csr=csr).status_code == 201
    new_key = rotate(api, "SN-LIFE", key)[1]
    assert confirm(api, "SN-LIFE", new_key).status_code == 200

    deliver_all()

    assert receiver.types_for("SN-LIFE") == [
        "device.registered",
        "certificate.issued",
        "certificate.revoked",
        "device.reset",
        "certificate.issued",
        "certificate.rotated",
        "certificate.revoked",
    ]
    events = [e for e in receiver.events() if e["data"]["serial"] == "SN-LIFE"]
    issued, revoked, reset = events[1]["data"], events[2]["data"], events[3]["data"]
    assert issued["certificate_id"] == revoked["certificate_id"]
    assert revoked["reason"] == "stolen"
    assert issued["key_origin"] == "aws"
    assert reset["reason"] == "found"
    assert reset["token_expires_at"].endswith("Z")
    rotated, old = events[5]["data"], events[6]["data"]
    assert rotated["previous_certificate_id"] == old["certificate_id"] == events[4]["data"]["certificate_id"]
    assert old["reason"] == "rotated"
    assert Device.objects.get(serial="SN-LIFE").current_certificate.certificate_id == rotated["certificate_id"]


def test_a_later_event_of_a_device_waits_behind_a_failing_one_while_other_devices_go_on(receiver, endpoint):
    register("SN-A")
    with transaction.atomic():
        # A second event of SN-A, queued behind the first.
        events_record(
            [NewEvent(kind=AuditKind.DEVICE_REGISTERED, actor="test", serial="SN-A", data={"n": 2})],
            subjects={"SN-A": Subject(thing_name="SN-A", product="meter")},
        )
    register("SN-B")
    receiver.failing_serials = {"SN-A"}

    deliver_all()  # SN-A's first fails; its second waits behind it; SN-B goes

    # SN-A's first and SN-B's went out side by side: they may arrive in either order.
    assert sorted(e["data"]["serial"] for e in receiver.events()) == ["SN-A", "SN-B"]
    pending = list(WebhookDelivery.objects.filter(delivered_at__isnull=True).order_by("id"))
    assert [d.serial for d in pending] == ["SN-A", "SN-A"]
    failed, waiting = pending
    assert failed.attempts == 1
    assert failed.last_status == 500
    assert failed.next_attempt_at > timezone.now()
    assert waiting.attempts == 0
    # Pushed back with the one it waits for, so the worker does not look at it meanwhile.
    assert waiting.next_attempt_at == failed.next_attempt_at

    receiver.failing_serials = set()
    WebhookDelivery.objects.filter(pk=failed.pk).update(next_attempt_at=timezone.now())
    deliver_all()

    assert [e["data"]["serial"] for e in receiver.events()][2:] == ["SN-A", "SN-A"]
    ids = [headers["webhook-id"] for headers, _ in receiver.received]
    assert ids[2] == failed.message_id
    assert ids[3] == waiting.message_id
    assert not WebhookDelivery.objects.filter(delivered_at__isnull=True).exists()


def test_a_failing_endpoint_is_retried_with_back_off_and_finally_delivered(receiver, endpoint):
    register("SN-1")
    receiver.failures_left = 3

    for attempt in range(1, 4):
        report = deliveries_send(ignore_backoff=True)
        assert (report.delivered, report.failed) == (0, 1)
        delivery = WebhookDelivery.objects.get()
        assert delivery.attempts == attempt
        assert delivery.last_error == "HTTP 500"
        wait = (delivery.next_attempt_at - delivery.last_attempt_at).total_seconds()
        assert 5 * 2 ** (attempt - 1) / 2 <= wait <= 5 * 2 ** (attempt - 1)
        assert deliveries_send().handled == 0, "not before its back-off is over"
    report = deliveries_send(ignore_backoff=True)

    assert (report.delivered, report.failed) == (1, 0)
    delivery = WebhookDelivery.objects.get()
    assert delivery.delivered_at is not None
    assert delivery.attempts == 4
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(receiver.received) == 4
    assert ids == {delivery.message_id}, "every attempt carries the same webhook-id"


def test_retry_delays_double_with_jitter_up_to_the_cap(settings):
    settings.CVM_WEBHOOK_MAX_BACKOFF_SECONDS = 3600
    for attempts, ceiling in [(1, 5), (2, 10), (3, 20), (8, 640), (20, 3600)]:
        delays = {retry_delay(attempts) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "jittered"


def test_redirects_are_never_followed(receiver, endpoint):
    elsewhere = Receiver()
    try:
        receiver.location = elsewhere.url
        register("SN-1")

        report = deliveries_send()

        assert report.failed == 1
        assert elsewhere.received == []
        delivery = WebhookDelivery.objects.get()
        assert delivery.last_status == 307
        assert "redirects are not followed" in delivery.last_error
    finally:
        elsewhere.close()


def test_a_slow_endpoint_times_out(receiver, endpoint, settings):
    settings.CVM_WEBHOOK_READ_TIMEOUT = 0.3
    receiver.delay = 1.5
    register("SN-1")

    started = time.monotonic()
    report = deliveries_send()

    assert report.failed == 1
    assert time.monotonic() - started < 1.4
    assert WebhookDelivery.objects.get().last_error == "timeout"


def test_https_endpoints_are_verified_against_certifi_or_the_configured_bundle(db, tmp_path, settings):
    from scripts.local_tls import ensure_tls

    tls = ensure_tls(tmp_path / "tls")
    receiver = Receiver(tls=tls)
    try:
        webhook_add(url=receiver.url, event_types=[], actor="test")
        register("SN-1")

        assert deliveries_send().failed == 1  # a private CA is not in certifi's bundle
        assert WebhookDelivery.objects.get().last_error == "TLS failed: the endpoint's certificate did not verify"

        settings.CVM_WEBHOOK_CA_BUNDLE = str(tls.ca_cert)
        assert deliveries_send(ignore_backoff=True).delivered == 1
        assert [e["data"]["serial"] for e in receiver.events()] == ["SN-1"]
    finally:
        receiver.close()


def test_an_endpoint_that_is_down_is_a_failed_attempt(db):
    webhook_add(url="http://127.0.0.1:9/nothing-listens", event_types=[], actor="test")
    register("SN-1")

    assert deliveries_send().failed == 1
    assert WebhookDelivery.objects.get().last_error == "connection failed"


# --- what is sent, to whom ------------------------------------------------------------------------


def test_an_endpoint_receives_only_the_types_it_asked_for(receiver, api, aws_mock, make_device):
    webhook_add(url=receiver.url, event_types=["certificate.issued"], actor="test")
    device = make_device("SN-1")
    assert vend(api, device.serial, device.token).status_code == 201

    deliver_all()

    assert [e["type"] for e in receiver.events()] == ["certificate.issued"]


def test_events_commit_with_their_change_or_not_at_all(endpoint):
    def change_that_fails() -> None:
        with transaction.atomic():
            register("SN-1")
            raise RuntimeError("the change failed after its events were written")

    with pytest.raises(RuntimeError):
        change_that_fails()

    assert not WebhookDelivery.objects.exists()
    assert not Device.objects.exists()


def test_a_lockout_is_announced_once(api, make_device, receiver, endpoint, settings):
    settings.CVM_FAILED_TOKENS_PER_SERIAL = 3
    make_device("SN-1")

    statuses = [vend(api, "SN-1", "wrong-token").status_code for _ in range(6)]

    assert statuses == [403, 403, 403, 429, 429, 429]
    deliver_all()
    locked = [e for e in receiver.events() if e["type"] == "device.locked_out"]
    assert len(locked) == 1
    assert locked[0]["data"] == {
        "serial": "SN-1",
        "thing_name": "SN-1",
        "product": "sensor",
        "scope": "serial",
        "failures": 3,
        "client_address": "127.0.0.1",
    }


def test_a_disabled_endpoint_gets_nothing_new_and_its_pending_deliveries_wait(receiver, endpoint):
    register("SN-1")
    webhook_set_enabled(endpoint_id=endpoint.endpoint.pk, enabled=False, actor="test")
    register("SN-2")

    deliver_all()
    assert receiver.received == []

    webhook_set_enabled(endpoint_id=endpoint.endpoint.pk, enabled=True, actor="test")
    deliver_all()
    assert [e["data"]["serial"] for e in receiver.events()] == ["SN-1"]
    kinds = set(AuditEvent.objects.values_list("kind", flat=True))
    assert {AuditKind.WEBHOOK_DISABLED, AuditKind.WEBHOOK_ENABLED} <= kinds


def test_a_bulk_registration_is_announced_per_device_to_each_endpoint(receiver, endpoint):
    second = Receiver()
    try:
        webhook_add(url=second.url, event_types=["device.registered"], actor="test")
        rows = [services.ImportRow(line=i, serial=f"SN-{i:05d}", product="meter") for i in range(2000)]
        services.devices_import(rows=rows, actor="test")

        assert WebhookDelivery.objects.count() == 4000
        deliver_all(batch_size=500)

        assert len(receiver.received) == len(second.received) == 2000
        assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 2000
    finally:
        second.close()


def test_no_event_ever_carries_a_token_or_a_key(api, aws_mock, make_device, receiver, endpoint):
    secrets_seen: list[str] = [endpoint.secret]
    secrets_seen.append(api_key_create(name="line-1", role="factory", actor="test").key)
    device = make_device("SN-S")
    secrets_seen.append(device.token)
    issued = vend(api, device.serial, device.token).json()
    secrets_seen.append(issued["private_key_pem"])
    reset = services.device_reset(serial="SN-S", actor="test")
    secrets_seen.append(reset.token)
    secrets_seen.append(Device.objects.get(serial="SN-S").token_digest)
    settings_key = "test-token-hmac-key-not-for-production-0000"
    secrets_seen.append(settings_key)
    for _ in range(11):
        vend(api, "SN-S", "a-wrong-token-guessed")

    deliver_all()

    bodies = [body for _, body in receiver.received] + list(WebhookDelivery.objects.values_list("body", flat=True))
    assert receiver.types_for("SN-S") == [
        "device.registered",
        "certificate.issued",
        "certificate.revoked",
        "device.reset",
        "device.locked_out",
    ]
    for body in bodies:
        for secret in secrets_seen:
            assert secret not in body
        for word in ("PRIVATE KEY", 'token"', "a-wrong-token", "whsec_", "digest"):
            assert word not in body


# --- commands and the worker ----------------------------------------------------------------------


def test_deliver_webhooks_once_delivers_and_says_what_is_left(receiver, endpoint):
    register("SN-1")
    register("SN-2")
    out = StringIO()

    call_command("deliver_webhooks", "--once", stdout=out)

    assert out.getvalue().strip() == "delivered 2 event(s); 0 failed attempt(s); 0 pending"
    register("SN-3")
    receiver.failures_left = 5
    with pytest.raises(CommandError, match="1 delivery is still pending"):
        call_command("deliver_webhooks", "--once", stdout=StringIO())


@pytest.mark.django_db(transaction=True)
def test_the_worker_delivers_within_about_a_second(receiver):
    webhook_add(url=receiver.url, event_types=[], actor="test")
    stop = threading.Event()
    worker = threading.Thread(target=webhooks_follow, kwargs={"stop": stop})
    worker.start()
    try:
        register("SN-1")
        deadline = time.monotonic() + 5
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e["data"]["serial"] for e in receiver.events()] == ["SN-1"]
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()


def test_the_sync_worker_runs_webhook_delivery_too():
    import inspect

    from provisioning.management.commands import sync_dynamodb

    assert "webhooks_follow" in inspect.getsource(sync_dynamodb.Command.handle)


# --- admin --------------------------------------------------------------------------------------


def test_the_admin_lists_failing_deliveries_and_security_can_disable_an_endpoint(
    as_user, security_user, auditor_user, receiver, endpoint
):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.urls import reverse

    register("SN-1")
    receiver.failures_left = 1
    deliveries_send()
    failing = reverse("admin:provisioning_webhookdelivery_changelist") + "?status=failing"
    endpoints = reverse("admin:provisioning_webhookendpoint_changelist")

    auditor = as_user(auditor_user)
    page = auditor.get(failing)
    assert page.status_code == 200
    assert b"HTTP 500" in page.content
    listing = auditor.get(endpoints)
    assert listing.status_code == 200
    assert endpoint.secret.encode() not in listing.content
    detail = auditor.get(reverse("admin:provisioning_webhookendpoint_change", args=[endpoint.endpoint.pk]))
    assert endpoint.secret.encode() not in detail.content
    auditor.post(endpoints, {"action": "disable_action", ACTION_CHECKBOX_NAME: [endpoint.endpoint.pk]})
    assert WebhookEndpoint.objects.get().enabled

    security = as_user(security_user)
    security.post(endpoints, {"action": "disable_action", ACTION_CHECKBOX_NAME: [endpoint.endpoint.pk]})

    assert not WebhookEndpoint.objects.get().enabled
    assert WebhookEndpoint.objects.get().disabled_by == "staff:sam"


def test_an_old_delivered_row_is_pruned_and_a_pending_one_kept(receiver, endpoint):
    from provisioning.webhooks import deliveries_prune

    register("SN-1")
    deliver_all()
    register("SN-2")
    WebhookDelivery.objects.filter(serial="SN-1").update(delivered_at=timezone.now() - timedelta(days=8))

    assert deliveries_prune(older_than=timedelta(days=7)) == 1
    assert list(WebhookDelivery.objects.values_list("serial", flat=True)) == ["SN-2"]


def test_a_url_check_names_what_is_wrong():
    with pytest.raises(InputInvalid, match="HTTPS only"):
        webhook_url_check("http://10.0.0.1/hook")
