"""Hostile input, guessing, key rotation, production settings and logs (issue: hardening)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import ssl
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning import services
from provisioning.crypto import CsrInvalid, csr_validate, token_digest
from provisioning.logs import JsonFormatter
from provisioning.models import AuditEvent, AuditKind, Device

from .conftest import VEND_URL, make_csr, vend

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


# --- strict input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "[" * 20000 + "]" * 20000,  # nesting that exhausts the JSON parser, under the 64 KiB limit
        '"just a string"',
        "[1, 2]",
        "null",
        '{"serial": "SN-1\\n", "token": "t"}',  # trailing newline slips past a `$` pattern
        '{"serial": "SN-1", "token": "a\\u0000b"}',
        '{"serial": ["SN-1"], "token": "t"}',
        '{"serial": "SN-\\u0661", "token": "t"}',  # an Arabic-Indic digit is not [0-9]
        b'{"serial": "\xff\xfe", "token": "t"}',
    ],
)
def test_hostile_bodies_get_a_clear_400(api, body):
    response = api.generic("POST", VEND_URL, body, content_type="application/json")
    assert response.status_code == 400
    assert isinstance(response.json(), dict)


# Spellings Python's codec registry knows but that are not text, or not an ASCII superset, or unknown.
REFUSED_CHARSETS = ["bz2", "rot13", "utf-16", "hex", "zlib_codec", "base64", "utf-7", "utf-32", "cp037", "nonsense"]
MULTIPART_LOGIN = (
    b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n\r\nfiona\r\n'
    b'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\nwrong\r\n--XyZ--\r\n'
)
CHARSET_BODIES = {
    "urlencoded": ("application/x-www-form-urlencoded; charset={}", b"username=fiona&password=wrong"),
    "multipart": ("multipart/form-data; boundary=XyZ; charset={}", MULTIPART_LOGIN),
    "text": ("text/plain; charset={}", b"x"),
}


@pytest.mark.parametrize("kind", CHARSET_BODIES)
@pytest.mark.parametrize("charset", REFUSED_CHARSETS)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_staff_pages_refuse_a_charset_that_is_not_text_with_a_plain_400(client, caplog, method, charset, kind):
    content_type, body = CHARSET_BODIES[kind]

    response = client.generic(method, "/admin/login/?next=/admin/", body, content_type=content_type.format(charset))

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert b"charset" in response.content
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a refusal is not an error to log"
    assert AuditEvent.objects.count() == 0, "no form was read, so no login was even attempted"


@pytest.mark.parametrize("kind", CHARSET_BODIES)
@pytest.mark.parametrize("charset", REFUSED_CHARSETS)
def test_device_api_refuses_a_charset_that_is_not_text_with_a_json_400(api, caplog, charset, kind):
    content_type, _ = CHARSET_BODIES[kind]
    body = b'{"serial": "SN-1", "token": "t"}'

    response = api.generic("POST", VEND_URL, body, content_type=content_type.format(charset))

    assert response.status_code == 400
    assert response.json() == {"detail": "unsupported charset in the Content-Type header; send UTF-8"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", "us-ascii", "latin-1", "ISO-8859-15", "windows-1252"])
def test_text_charsets_are_still_accepted(api, client, charset):
    vended = api.generic("POST", VEND_URL, b'{"serial": "SN-1", "token": "t"}', f"application/json; charset={charset}")
    login = client.generic(
        "POST", "/admin/login/", MULTIPART_LOGIN, f"multipart/form-data; boundary=XyZ; charset={charset}"
    )

    assert vended.status_code == 403, "read and refused as an unknown serial, not as a bad request"
    assert login.status_code == 200, "the login form, with its error"


@pytest.mark.parametrize("path", ["/admin/login/", VEND_URL])
@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset*=x-unknown''utf-8",  # RFC 2231, unknown charset
        "application/x-www-form-urlencoded; charset*=utf-8''bz%00",  # a NUL in the charset name
        "application/json; charset*=utf-8''rot13",
    ],
)
def test_a_content_type_django_cannot_parse_is_a_400_from_the_server_itself(db, path, content_type):
    """Django reads this header while it builds the request, before any middleware: the WSGI app must cope."""
    import io
    from wsgiref.util import setup_testing_defaults

    from cvm_portal.wsgi import application

    body = b"username=fiona&password=wrong"
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "SERVER_NAME": "localhost",
    }
    setup_testing_defaults(environ)
    started = []
    chunks = application(environ, lambda status, headers, exc_info=None: started.append(status))

    assert started[0].startswith("400"), b"".join(chunks)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000) | st.binary(max_size=2000).map(lambda b: b.decode("latin-1")))
def test_csr_parsing_only_ever_refuses_garbage(garbage):
    with pytest.raises(CsrInvalid):
        csr_validate(garbage, serial="SN-1")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_csr_parsing_survives_mutated_requests(data):
    pem, _ = VALID_CSR
    lines = pem.splitlines()
    body = list("".join(lines[1:-1]))
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))
    mutated = "\n".join([lines[0], *("".join(body[i : i + 64]) for i in range(0, len(body), 64)), lines[-1]])
    try:
        result = csr_validate(mutated, serial="SN-1")
    except CsrInvalid:
        return
    assert result.pem.startswith("-----BEGIN CERTIFICATE REQUEST-----")


VALID_CSR = make_csr("SN-1")


# --- brute force ----------------------------------------------------------------------------------


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=3, CVM_FAILED_TOKENS_PER_SERIAL=100)
def test_failures_from_one_address_across_serials_are_limited(api, aws_mock, make_device):
    victim = make_device("SN-VICTIM")
    for i in range(3):
        assert vend(api, f"SN-GUESS{i}", "guess").status_code == 403

    response = vend(api, victim.serial, victim.token)

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 3500
    throttled = AuditEvent.objects.filter(kind=AuditKind.VEND_THROTTLED).get()
    assert throttled.data == {"scope": "address", "failures": 3}
    other_address = vend_from(api, victim.serial, victim.token, remote="192.0.2.77")
    assert other_address.status_code == 201


def vend_from(api, serial, token, *, remote, forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return api.post(VEND_URL, {"serial": serial, "token": token}, format="json", **extra)


@override_settings(CVM_FAILED_TOKENS_PER_ADDRESS=3, CVM_FAILED_TOKENS_PER_SERIAL=100, CVM_TRUSTED_PROXIES=0)
def test_forged_forwarded_for_is_ignored_without_trusted_proxies(api, db):
    statuses = [
        vend_from(api, f"SN-{i}", "guess", remote="198.51.100.9", forwarded=f"203.0.113.{i}").status_code
        for i in range(5)
    ]
    assert statuses == [403, 403, 403, 429, 429]
    assert set(AuditEvent.objects.values_list("client_address", flat=True)) == {"198.51.100.9"}


@override_settings(
    CVM_FAILED_TOKENS_PER_ADDRESS=3,
    CVM_FAILED_TOKENS_PER_SERIAL=100,
    CVM_TRUSTED_PROXIES=1,
    CVM_TRUSTED_PROXY_ADDRESSES=[ipaddress.ip_network("10.0.0.2")],
)
def test_behind_one_proxy_only_the_address_it_saw_counts(api, db):
    # The client forges the left part; our proxy (10.0.0.2) appends the address it really saw.
    statuses = [
        vend_from(api, f"SN-{i}", "guess", remote="10.0.0.2", forwarded=f"203.0.113.{i}, 198.51.100.9").status_code
        for i in range(5)
    ]
    assert statuses == [403, 403, 403, 429, 429]
    assert set(AuditEvent.objects.values_list("client_address", flat=True)) == {"198.51.100.9"}
    other_client = vend_from(api, "SN-X", "guess", remote="10.0.0.2", forwarded="198.51.100.10")
    assert other_client.status_code == 403


@override_settings(CVM_FAILED_TOKENS_PER_SERIAL=3)
def test_the_right_token_works_again_once_the_window_has_passed(api, aws_mock, make_device, monkeypatch):
    device = make_device()
    for _ in range(3):
        vend(api, device.serial, "guess")
    assert vend(api, device.serial, device.token).status_code == 429

    later = timezone.now() + timedelta(minutes=61)
    monkeypatch.setattr(timezone, "now", lambda: later)

    assert vend(api, device.serial, device.token).status_code == 201


# --- key rotation -----------------------------------------------------------------------------------


def test_rotating_the_hmac_key_keeps_flashed_tokens_valid(api, aws_mock, make_device, settings):
    old_key = settings.CVM_TOKEN_HMAC_KEY
    device = make_device()
    settings.CVM_TOKEN_HMAC_KEY = "a-brand-new-token-hmac-key-000000000000000"
    settings.CVM_TOKEN_HMAC_KEY_FALLBACKS = [old_key]

    fresh = services.tokens_issue(serials=[make_device(with_token=False).serial], actor="t")[0]

    assert Device.objects.get(serial=fresh.serial).token_digest == token_digest(fresh.token)
    assert vend(api, device.serial, device.token).status_code == 201, "a token issued under the old key"
    settings.CVM_TOKEN_HMAC_KEY_FALLBACKS = []
    assert vend(api, fresh.serial, fresh.token).status_code == 201


def test_without_the_old_key_old_tokens_stop_working(api, aws_mock, make_device, settings):
    device = make_device()
    settings.CVM_TOKEN_HMAC_KEY = "a-brand-new-token-hmac-key-000000000000000"
    assert vend(api, device.serial, device.token).status_code == 403


# --- production settings ------------------------------------------------------------------------------

PRODUCTION = {
    "SECRET_KEY": "k3y-" + "Zq8xW2vN5bR7tY1uI4oP6aS9dF3gH0jK" * 2,
    "CVM_TOKEN_HMAC_KEY": "h-" + "Mn4Bv7Cx1Zl0Kj9Hg8Fd6Sa5Qw3Er2Ty" * 2,
    "CVM_AUDIT_HMAC_KEY": "a-" + "Pq7Wm2Xz9Lk4Jh1Gf6Ds3Ap8Oi5Uy0Tr" * 2,
    "ALLOWED_HOSTS": "cvm.example.com",
    "DATABASE_URL": "sqlite:////tmp/cvm-deploy-check.sqlite3",
    "CVM_ADMIN_2FA": "on",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k not in {"DEBUG", "SECURE_SSL_REDIRECT"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, check=False
    )


def test_check_deploy_reports_nothing_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "CVM_TOKEN_HMAC_KEY", "CVM_AUDIT_HMAC_KEY", "ALLOWED_HOSTS"])
def test_the_portal_refuses_to_start_without_its_secrets_and_hosts(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert f"{missing} must be set when DEBUG is off" in result.stderr


def test_gunicorn_serves_tls_1_2_or_newer_only():
    namespace: dict[str, object] = {}
    exec((ROOT / "gunicorn.conf.py").read_text(), namespace)  # noqa: S102 - our own config file
    context = namespace["ssl_context"](None, lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert namespace["accesslog"] is None, "gunicorn's access log would print query strings"


# --- logs -------------------------------------------------------------------------------------------


def test_device_values_cannot_forge_log_lines():
    record = logging.LogRecord("provisioning", logging.INFO, __file__, 1, "vend refused", None, None)
    record.serial = 'SN-1\n{"level": "INFO", "message": "certificate issued"}'
    record.token = "s3cr3t-token"

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["serial"].startswith("SN-1\n")
    assert entry["token"] == "[redacted]"
    assert "s3cr3t-token" not in line


def test_one_request_line_per_request_with_id_serial_outcome_and_duration(api, caplog):
    caplog.set_level(logging.INFO, logger="provisioning.requests")
    api.post(VEND_URL + "?token=leaked", {"serial": "SN-LOG", "token": "hunter2"}, format="json")
    records = [r for r in caplog.records if r.name == "provisioning.requests"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    entry = json.loads(line)
    assert entry["serial"] == "SN-LOG"
    assert entry["outcome"] == "refused:unknown_serial"
    assert entry["path"] == "/api/v1/certificates"
    assert entry["status"] == 403
    assert len(entry["request_id"]) == 32
    assert entry["duration_ms"] >= 0
    assert "hunter2" not in line
    assert "leaked" not in line
