"""What an insider, a proxy and a flood cannot do: each test performs the attack.

The audit log's own attacks (rewritten chain, truncated tail, restored backup, triggers) are in
test_audit.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from provisioning.middleware import ProxyHeadersMiddleware, client_address
from provisioning.models import AuditEvent, AuditKind

from .conftest import VEND_URL
from .settings_reload import settings_under
from .test_hardening import PRODUCTION, manage

PROXY = [ipaddress.ip_network("10.0.0.2")]


def vend_from(api, serial, *, remote, forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return api.post(VEND_URL, {"serial": serial, "token": "guess-" + "x" * 20}, format="json", **extra)


# --- 2. No unbounded writes from unauthenticated callers --------------------------------------------


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=5, CVM_FAILED_TOKENS_PER_SERIAL=1000)
def test_a_flood_from_an_address_over_its_limit_writes_nothing_more(api, db):
    statuses = [vend_from(api, f"SN-{i}", remote="198.51.100.7").status_code for i in range(400)]

    assert statuses[:5] == [403] * 5
    assert set(statuses[5:]) == {429}
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED).count() == 5
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_THROTTLED).count() == 1, "one event per window"


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=1000, CVM_FAILED_TOKENS_PER_SERIAL=3)
def test_a_flood_against_a_locked_serial_writes_one_throttled_event(api, make_device):
    device = make_device("SN-1")
    for i in range(60):
        vend_from(api, "SN-1", remote=f"198.51.100.{i}")

    assert AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED, serial="SN-1").count() == 3
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_THROTTLED, serial="SN-1").count() == 1
    assert device.device.state == "token_issued"


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=3, CVM_FAILED_TOKENS_PER_SERIAL=1000)
def test_a_locked_address_gets_the_same_429_from_the_early_check_without_a_query(api, db):
    for i in range(3):
        assert vend_from(api, f"SN-{i}", remote="198.51.100.7").status_code == 403
    locking = vend_from(api, "SN-3", remote="198.51.100.7")  # the service finds the limit and locks
    with CaptureQueriesContext(connection) as queries:
        early = vend_from(api, "SN-4", remote="198.51.100.7")

    assert len(queries) == 0
    assert early.status_code == locking.status_code == 429
    assert early.content == locking.content == b'{"detail":"too many failed attempts; retry later"}'
    assert abs(int(early["Retry-After"]) - int(locking["Retry-After"])) <= 1
    assert int(early["Retry-After"]) > 3500
    for header in ("Content-Type", "Content-Length", "Cache-Control"):
        assert early[header] == locking[header]


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=2, CVM_FAILED_TOKENS_PER_SERIAL=1000, CVM_LEGACY_API=True)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", VEND_URL, "not json at all"),
        ("post", "/api/v1/certificates/rotate", '{"serial": "SN-1", "csr": "x", "proof": "y"}'),
        ("post", "/api/v1/certificates/rotate/confirm", '{"serial": "SN-1", "proof": "y"}'),
        ("get", "/getcert?serialNumber=SN-1&deviceToken=guess", None),
    ],
)
def test_every_device_call_from_a_locked_address_is_refused_before_its_body_is_read(api, db, method, path, body):
    for i in range(3):
        vend_from(api, f"SN-{i}", remote="198.51.100.7")
    with CaptureQueriesContext(connection) as queries:
        if body is None:
            response = getattr(api, method)(path, REMOTE_ADDR="198.51.100.7")
        else:
            response = getattr(api, method)(path, body, content_type="application/json", REMOTE_ADDR="198.51.100.7")

    assert response.status_code == 429
    assert response.json() == {"detail": "too many failed attempts; retry later"}
    assert len(queries) == 0
    assert vend_from(api, "SN-9", remote="198.51.100.8").status_code == 403, "another address is not locked"


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=2, CVM_FAILED_TOKENS_PER_SERIAL=1000, CVM_LEGACY_API=False)
def test_the_early_check_leaves_a_switched_off_legacy_call_unknown(api, db):
    for i in range(3):
        vend_from(api, f"SN-{i}", remote="198.51.100.7")

    assert api.get("/getcert?serialNumber=SN-1&deviceToken=x", REMOTE_ADDR="198.51.100.7").status_code == 404


@override_settings(
    CVM_FAILED_TOKENS_PER_ADDRESS=2,
    CVM_FAILED_TOKENS_PER_SERIAL=1000,
    CVM_TRUSTED_PROXIES=1,
    CVM_TRUSTED_PROXY_ADDRESSES=PROXY,
)
def test_the_early_check_sees_the_address_the_proxy_saw(api, db):
    for i in range(3):
        vend_from(api, f"SN-{i}", remote="10.0.0.2", forwarded="203.0.113.5")

    assert vend_from(api, "SN-4", remote="10.0.0.2", forwarded="203.0.113.5").status_code == 429
    assert vend_from(api, "SN-4", remote="10.0.0.2", forwarded="203.0.113.6").status_code == 403


def query_shapes(queries) -> list[str]:
    """The statements with their values taken out: what the database was asked, not about whom."""
    return [re.sub(r"\d+", "N", re.sub(r"'[^']*'", "V", q["sql"])) for q in queries]


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=1000, CVM_FAILED_TOKENS_PER_SERIAL=1000)
def test_a_wrong_token_and_an_unknown_serial_are_refused_with_the_same_few_queries(api, make_device):
    make_device("SN-1")
    vend_from(api, "SN-WARM", remote="198.51.100.19")
    with CaptureQueriesContext(connection) as wrong:
        wrong_token = vend_from(api, "SN-1", remote="198.51.100.20")
    with CaptureQueriesContext(connection) as unknown:
        unknown_serial = vend_from(api, "SN-NOBODY", remote="198.51.100.21")

    assert wrong_token.status_code == unknown_serial.status_code == 403
    assert wrong_token.content == unknown_serial.content
    assert query_shapes(wrong) == query_shapes(unknown), "no query tells a known serial from an unknown one"
    reads = [q for q in query_shapes(wrong) if q.startswith("SELECT") and "auditchainhead" not in q]
    assert len(reads) == 2, reads  # the device and the failure counts, nothing else
    assert "provisioning_device" in reads[0]
    assert len(wrong) <= 7
    assert AuditEvent.objects.filter(kind=AuditKind.VEND_REFUSED, serial__in=["SN-1", "SN-NOBODY"]).count() == 2


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=1000, CVM_FAILED_TOKENS_PER_SERIAL=3)
def test_a_locked_serial_is_answered_after_one_read_of_the_device(api, make_device):
    make_device("SN-1")
    for i in range(4):
        vend_from(api, "SN-1", remote=f"198.51.100.{i}")
    with CaptureQueriesContext(connection) as queries:
        response = vend_from(api, "SN-1", remote="198.51.100.99")

    assert response.status_code == 429
    assert len(queries) == 1
    assert "provisioning_device" in queries[0]["sql"]


def test_failed_logins_with_varying_usernames_are_recorded_a_bounded_number_of_times(client, db):
    login = reverse("admin:login")
    for i in range(60):
        client.post(login, {"username": f"user-{i}", "password": "wrong"}, REMOTE_ADDR="203.0.113.5")

    failures = AuditEvent.objects.filter(kind=AuditKind.ADMIN_LOGIN_FAILED)
    assert failures.count() == 20
    assert "not recorded" in failures.order_by("-id").first().data["note"]


# --- 3. A forged X-Forwarded-For counts only from a real proxy --------------------------------------


@override_settings(
    CVM_FAILED_TOKENS_PER_ADDRESS=3,
    CVM_FAILED_TOKENS_PER_SERIAL=1000,
    CVM_TRUSTED_PROXIES=1,
    CVM_TRUSTED_PROXY_ADDRESSES=PROXY,
)
def test_a_client_reaching_the_portal_directly_cannot_rotate_x_forwarded_for(api, db):
    statuses = [
        vend_from(api, f"SN-{i}", remote="198.51.100.9", forwarded=f"203.0.113.{i}").status_code for i in range(120)
    ]

    assert statuses[:3] == [403] * 3
    assert set(statuses[3:]) == {429}
    assert set(AuditEvent.objects.values_list("client_address", flat=True)) == {"198.51.100.9"}


@override_settings(AXES_FAILURE_LIMIT=5, CVM_TRUSTED_PROXIES=1, CVM_TRUSTED_PROXY_ADDRESSES=PROXY)
def test_the_admin_lockout_holds_against_a_rotated_header(client, factory_user):
    login = reverse("admin:login")
    for i in range(12):
        client.post(
            login,
            {"username": "fiona", "password": "wrong"},
            REMOTE_ADDR="198.51.100.9",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{i}",
        )

    response = client.post(
        login,
        {"username": "fiona", "password": "a-long-test-password-1"},
        REMOTE_ADDR="198.51.100.9",
        HTTP_X_FORWARDED_FOR="203.0.113.200",
    )

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@override_settings(CVM_TRUSTED_PROXIES=1, CVM_TRUSTED_PROXY_ADDRESSES=PROXY)
def test_forwarded_headers_from_anyone_but_the_proxy_are_dropped():
    seen = {}

    def view(request):
        seen.update(request.META)
        return None

    factory = RequestFactory()
    direct = factory.get(
        "/", REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR="1.2.3.4", HTTP_X_FORWARDED_PROTO="https"
    )
    ProxyHeadersMiddleware(view)(direct)
    assert "HTTP_X_FORWARDED_FOR" not in seen
    assert "HTTP_X_FORWARDED_PROTO" not in seen
    assert client_address(direct) == "198.51.100.9"

    proxied = factory.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.9")
    ProxyHeadersMiddleware(view)(proxied)
    assert client_address(proxied) == "198.51.100.9", "the address the proxy saw, not the forged one"


@pytest.mark.parametrize(
    ("written", "counted"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:5555", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:443", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1%eth0", "2001:db8::1"),
        ("fe80::1%25x", "fe80::1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
    ],
)
@override_settings(CVM_TRUSTED_PROXIES=1, CVM_TRUSTED_PROXY_ADDRESSES=PROXY)
def test_each_spelling_of_an_address_from_the_proxy_is_one_caller(written, counted):
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=written)
    assert client_address(request) == counted


@override_settings(
    CVM_FAILED_TOKENS_PER_ADDRESS=3,
    CVM_FAILED_TOKENS_PER_SERIAL=1000,
    CVM_TRUSTED_PROXIES=1,
    CVM_TRUSTED_PROXY_ADDRESSES=PROXY,
)
def test_an_address_written_another_way_shares_its_failures_and_never_fails_the_database(api, db):
    spellings = ["198.51.100.77", "::ffff:198.51.100.77", "198.51.100.77:4000", "[::ffff:198.51.100.77]:1"]
    statuses = [vend_from(api, f"SN-{i}", remote="10.0.0.2", forwarded=spellings[i % 4]).status_code for i in range(6)]
    zoned = vend_from(api, "SN-Z", remote="10.0.0.2", forwarded="fe80::1%eth0")

    assert statuses == [403, 403, 403, 429, 429, 429]
    assert zoned.status_code == 403, "an IPv6 zone is not an outage"
    assert set(AuditEvent.objects.values_list("client_address", flat=True)) == {"198.51.100.77", "fe80::1"}


@override_settings(CVM_TRUSTED_PROXY_ADDRESSES=[ipaddress.ip_network("127.0.0.1")], CVM_METRICS_TOKEN="")
def test_metrics_need_a_token_behind_a_proxy(client, db):
    # Through the proxy on loopback every request arrives from 127.0.0.1.
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert response.status_code == 403
    direct_looking = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert direct_looking.status_code == 403


def test_metrics_loopback_rule_applies_to_the_real_client(client, db):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.9").status_code == 403


def test_trusting_proxies_without_naming_them_stops_the_portal_at_start(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match="CVM_TRUSTED_PROXY_ADDRESSES"):
        settings_under(monkeypatch, DEBUG="1", CVM_TRUSTED_PROXIES="1")
    with pytest.raises(ImproperlyConfigured, match="not an address or CIDR"):
        settings_under(monkeypatch, DEBUG="1", CVM_TRUSTED_PROXY_ADDRESSES="10.0.0.0/8,proxy.example")


# --- 4. The admin login resists spraying -------------------------------------------------------------


@override_settings(AXES_FAILURE_LIMIT=5)
def test_one_address_cannot_spray_many_usernames(client, factory_user):
    login = reverse("admin:login")
    for i in range(5):
        client.post(login, {"username": f"guess-{i}", "password": "wrong"}, REMOTE_ADDR="203.0.113.5")

    response = client.post(
        login, {"username": "fiona", "password": "a-long-test-password-1"}, REMOTE_ADDR="203.0.113.5"
    )

    assert response.status_code == 429, "the address is locked whatever username it tries next"


@override_settings(AXES_FAILURE_LIMIT=5)
def test_a_locked_account_does_not_open_from_a_second_address(client, factory_user):
    login = reverse("admin:login")
    for i in range(5):
        client.post(login, {"username": "fiona", "password": "wrong"}, REMOTE_ADDR=f"203.0.113.{i}")

    response = client.post(
        login, {"username": "fiona", "password": "a-long-test-password-1"}, REMOTE_ADDR="198.51.100.77"
    )

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_two_factor_login_is_on_by_default_in_production(monkeypatch):
    monkeypatch.delenv("CVM_ADMIN_2FA", raising=False)
    production = settings_under(monkeypatch, **{k: v for k, v in PRODUCTION.items() if k != "CVM_ADMIN_2FA"})
    assert production["CVM_ADMIN_2FA"] is True


def test_check_deploy_warns_when_two_factor_login_is_off():
    result = manage("check", "--deploy", env={**PRODUCTION, "CVM_ADMIN_2FA": "off"})
    assert "cvm.W001" in result.stderr + result.stdout


def test_enroll_totp_prints_the_authenticator_url_once(factory_user, capsys):
    from django.core.management import call_command
    from django_otp.plugins.otp_totp.models import TOTPDevice

    call_command("enroll_totp", "fiona")

    assert capsys.readouterr().out.splitlines()[-1].startswith("otpauth://totp/")
    assert TOTPDevice.objects.filter(user=factory_user, confirmed=True).count() == 1


# --- 5. A Content-Security-Policy on every admin page -------------------------------------------------

STRICT = {
    "default-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'self'",
    "form-action 'self'",
}


def _policy(response) -> set[str]:
    return {part.strip() for part in response["Content-Security-Policy"].split(";") if part.strip()}


@pytest.mark.parametrize(
    "path", ["/admin/login/", "/admin/", "/admin/provisioning/device/", "/admin/provisioning/auditevent/"]
)
def test_every_admin_page_carries_the_strict_policy(client, superuser, path):
    client.force_login(superuser)
    response = client.get(path, follow=True)
    assert response.status_code == 200
    assert _policy(response) == STRICT


def test_the_api_docs_relax_only_styles_and_images(client, db):
    response = client.get("/api/docs")
    assert response.status_code == 200
    policy = _policy(response)
    assert STRICT - {"default-src 'self'"} <= policy
    assert "script-src" not in response["Content-Security-Policy"], "no inline script needed"
    assert "<script>" not in response.content.decode().replace(" ", "")


def test_the_portals_templates_carry_no_inline_script_or_style():
    for template in Path(__file__).resolve().parent.parent.joinpath("templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"<style|style=\"|<script(?![^>]*\bsrc=)|\bon[a-z]+=\"", text), template
