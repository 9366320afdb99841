"""Each role's daily work in the admin: import, tokens shown once, revoke, reset, export, dashboard, login."""

from __future__ import annotations

import base64
import csv
import io
import re
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from provisioning.crypto import token_digest
from provisioning.imports import imports_run_pending
from provisioning.models import AuditEvent, AuditKind, Certificate, CertificateStatus, Device, DeviceState

from .conftest import vend

pytestmark = pytest.mark.django_db


def url(name: str, *args: object) -> str:
    return reverse(f"admin:provisioning_{name}", args=args)


def tokens_on_page(html: str) -> dict[str, str]:
    return dict(re.findall(r"<tr><td>([^<]+)</td><td><code>([^<]+)</code>", html))


def test_factory_imports_a_csv_with_preview_then_confirm(as_user, factory_user, make_device):
    make_device("SN-KNOWN", with_token=False)
    client = as_user(factory_user)
    upload = SimpleUploadedFile("s.csv", b"serial,product\nSN-A,meter\nSN-B,\nSN-KNOWN,\n", content_type="text/csv")

    uploaded = client.post(url("device_import"), {"file": upload, "product": "sensor"})
    preview = client.get(uploaded["Location"])

    assert preview.status_code == 200
    html = preview.content.decode()
    assert "<strong>2</strong> new serial(s) will be registered; 1 already known" in html
    assert not Device.objects.filter(serial="SN-A").exists(), "nothing is imported before confirmation"

    confirmed = client.post(uploaded["Location"], {"confirm": "1"})
    imports_run_pending()

    assert confirmed.status_code == 302
    assert dict(Device.objects.filter(serial__in=["SN-A", "SN-B"]).values_list("serial", "product__name")) == {
        "SN-A": "meter",
        "SN-B": "sensor",
    }
    assert AuditEvent.objects.filter(kind=AuditKind.SERIALS_IMPORTED, actor="staff:fiona").exists()
    assert "Imported 2 new serial(s); 1 already known" in client.get(uploaded["Location"]).content.decode()


def test_import_with_bad_rows_lists_them_and_imports_nothing(as_user, factory_user):
    upload = SimpleUploadedFile("s.csv", b"serial\nSN-OK\nnot ok\n", content_type="text/csv")

    response = as_user(factory_user).post(url("device_import"), {"file": upload})

    assert "line 3: &#x27;not ok&#x27; is not a valid serial" in response.content.decode()
    assert "confirm-import" not in response.content.decode()
    assert Device.objects.count() == 0


def test_factory_adds_one_serial_through_the_service(as_user, factory_user, make_device):
    product = make_device("SN-X", with_token=False).device.product
    client = as_user(factory_user)

    response = client.post(url("device_add"), {"serial": "SN-NEW", "product": product.pk})

    assert response.status_code == 302
    device = Device.objects.get(serial="SN-NEW")
    assert device.state == DeviceState.REGISTERED
    assert AuditEvent.objects.filter(kind=AuditKind.DEVICE_REGISTERED, serial="SN-NEW").exists()
    bad = client.post(url("device_add"), {"serial": "bad serial", "product": product.pk})
    assert bad.status_code == 200
    assert "errorlist" in bad.content.decode()


def test_tokens_are_shown_once_never_cached_and_work(as_user, factory_user, make_device, api, aws_mock):
    devices = [make_device(f"SN-T{i}", with_token=False).device for i in range(2)]
    client = as_user(factory_user)
    data = {"action": "issue_tokens_action", ACTION_CHECKBOX_NAME: [d.pk for d in devices]}

    confirm = client.post(url("device_changelist"), data)
    assert Device.objects.filter(state=DeviceState.TOKEN_ISSUED).count() == 0
    confirmed = {
        **data,
        "confirm": "1",
        "ttl_days": "30",
        "nonce": confirm.context["nonce"],
        "selection": confirm.context["selection"],
    }
    page = client.post(url("device_changelist"), confirmed)

    assert confirm.status_code == page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    tokens = tokens_on_page(page.content.decode())
    assert set(tokens) == {"SN-T0", "SN-T1"}
    for serial, token in tokens.items():
        assert Device.objects.get(serial=serial).token_digest == token_digest(token)
    download = re.search(r'href="data:text/csv;base64,([^"]+)"', page.content.decode()).group(1)
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(download).decode())))
    assert {row["serial"]: row["token"] for row in rows} == tokens
    # Nothing secret can be shown again: the devices' pages and list carry no token.
    for target in (url("device_changelist"), url("device_change", devices[0].pk)):
        html = client.get(target).content.decode()
        assert all(token not in html for token in tokens.values())
    assert vend(api, "SN-T0", tokens["SN-T0"]).status_code == 201
    # Reloading the token page (the browser re-sends the POST) must not void the tokens just shown.
    reloaded = client.post(url("device_changelist"), confirmed, follow=True)
    assert "nothing was done again" in reloaded.content.decode()
    assert Device.objects.get(serial="SN-T1").token_digest == token_digest(tokens["SN-T1"])


def test_security_revokes_from_the_device_page_with_a_reason(as_user, security_user, make_device, api, aws_mock):
    device = make_device("SN-R")
    issued = vend(api, "SN-R", device.token).json()
    client = as_user(security_user)
    pk = device.device.pk

    page = client.get(url("device_revoke", pk))
    assert "Each certificate is set REVOKED in AWS IoT" in page.content.decode()
    missing_reason = client.post(
        url("device_revoke", pk),
        {"confirm": "1", "reason": "", "nonce": page.context["nonce"], "selection": page.context["selection"]},
    )
    assert missing_reason.status_code == 200
    assert Device.objects.get(pk=pk).state == DeviceState.ACTIVE

    done = client.post(
        url("device_revoke", pk),
        {
            "confirm": "1",
            "reason": "lost in transit",
            "nonce": missing_reason.context["nonce"],
            "selection": missing_reason.context["selection"],
        },
    )

    assert done.status_code == 302
    assert Device.objects.get(pk=pk).state == DeviceState.REVOKED
    certificate = Certificate.objects.get(certificate_id=issued["certificate_id"])
    assert (certificate.status, certificate.revoked_by, certificate.revoked_reason) == (
        CertificateStatus.REVOKED,
        "staff:sam",
        "lost in transit",
    )
    in_aws = aws_mock.iot.describe_certificate(certificateId=issued["certificate_id"])["certificateDescription"]
    assert in_aws["status"] == "REVOKED"


def test_bulk_revoke_reports_each_device_and_one_aws_failure_leaves_the_others_done(
    as_user, security_user, make_device, api, aws_mock, aws_fault
):
    devices = []
    for serial in ("SN-1", "SN-2", "SN-3"):
        made = make_device(serial)
        assert vend(api, serial, made.token).status_code == 201
        devices.append(made.device)
    failing_certificate = devices[1].current_certificate.certificate_id
    # UpdateCertificate carries the certificate id in its URL; only SN-2's never reaches AWS.
    fault = aws_fault("UpdateCertificate", when=lambda request: failing_certificate in request.url)
    client = as_user(security_user)
    selection = {"action": "revoke_action", ACTION_CHECKBOX_NAME: [d.pk for d in devices]}
    confirm = client.post(url("device_changelist"), selection)
    response = client.post(
        url("device_changelist"),
        {
            **selection,
            "confirm": "1",
            "reason": "recall",
            "nonce": confirm.context["nonce"],
            "selection": confirm.context["selection"],
        },
        follow=True,
    )

    messages = [str(m) for m in response.context["messages"]]
    assert "Revoked 2 device(s): SN-1, SN-3" in messages
    assert any(m.startswith("SN-2: not revoked: AWS IoT did not answer") for m in messages)
    assert dict(Device.objects.values_list("serial", "state")) == {
        "SN-1": DeviceState.REVOKED,
        "SN-2": DeviceState.ACTIVE,
        "SN-3": DeviceState.REVOKED,
    }
    assert fault.calls == 3, "botocore retried the failing call, then gave up for that device only"
    in_aws = aws_mock.iot.describe_certificate(certificateId=failing_certificate)["certificateDescription"]
    assert in_aws["status"] == "ACTIVE"


def test_reset_revokes_and_shows_the_new_token_once(as_user, security_user, make_device, api, aws_mock):
    device = make_device("SN-RESET")
    assert vend(api, "SN-RESET", device.token).status_code == 201
    client = as_user(security_user)

    confirmation = client.get(url("device_reset", device.device.pk)).context
    page = client.post(
        url("device_reset", device.device.pk),
        {
            "confirm": "1",
            "reason": "rma",
            "ttl_days": "7",
            "nonce": confirmation["nonce"],
            "selection": confirmation["selection"],
        },
    )

    tokens = tokens_on_page(page.content.decode())
    assert list(tokens) == ["SN-RESET"]
    assert "no-store" in page["Cache-Control"]
    assert vend(api, "SN-RESET", tokens["SN-RESET"]).status_code == 201
    assert Certificate.objects.filter(device__serial="SN-RESET", status=CertificateStatus.REVOKED).count() == 1


def test_auditor_exports_exactly_the_filtered_list(as_user, auditor_user, make_device, api, aws_mock):
    for serial in ("SN-E1", "SN-E2"):
        made = make_device(serial)
        vend(api, serial, made.token)
    vend(api, "SN-E1", "wrong-token")
    client = as_user(auditor_user)

    response = client.get(url("auditevent_export") + "?kind__exact=vend_refused")

    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [row["kind"] for row in rows] == ["vend_refused"]
    assert rows[0]["serial"] == "SN-E1"
    certificates = client.get(url("certificate_export") + "?q=SN-E2")
    rows = list(csv.DictReader(io.StringIO(b"".join(certificates.streaming_content).decode())))
    assert [row["device__serial"] for row in rows] == ["SN-E2"]


def test_auditor_search_and_filters_work(as_user, auditor_user, make_device, api, aws_mock):
    made = make_device("SN-S1")
    issued = vend(api, "SN-S1", made.token).json()
    client = as_user(auditor_user)
    fingerprint = Certificate.objects.get().fingerprint_sha256

    assert "SN-S1" in client.get(url("certificate_changelist") + f"?q={fingerprint}").content.decode()
    assert "SN-S1" in client.get(url("certificate_changelist") + f"?q={issued['certificate_id']}").content.decode()
    assert "SN-S1" in client.get(url("device_changelist") + "?state__exact=active").content.decode()
    assert "SN-S1" not in client.get(url("device_changelist") + "?state__exact=revoked").content.decode()
    events = client.get(url("auditevent_changelist") + "?serial=SN-S1").content.decode()
    assert "certificate issued" in events


def test_dashboard_counts_states_and_draws_the_chart_on_the_server(as_user, auditor_user, make_device, api, aws_mock):
    made = make_device("SN-D1")
    vend(api, "SN-D1", made.token)
    vend(api, "SN-D1", "wrong")
    make_device("SN-D2", with_token=False)

    html = as_user(auditor_user).get(reverse("admin:index")).content.decode()

    assert '<div class="cvm-state"><span class="n">1</span>active</div>' in html
    assert '<div class="cvm-state"><span class="n">1</span>registered</div>' in html
    assert html.count('<rect class="issued"') == 30
    today = timezone.now().date().isoformat()
    assert f"<title>{today}: 1 issued</title>" in html
    assert f"<title>{today}: 1 refused</title>" in html
    assert "<script" not in html.split('id="dashboard"')[1].split("</svg>")[0]


@override_settings(AXES_FAILURE_LIMIT=3)
def test_repeated_failed_logins_lock_out_until_the_cool_off_passes(client, factory_user):
    from axes.models import AccessAttempt

    login = reverse("admin:login")
    for _ in range(3):
        client.post(login, {"username": "fiona", "password": "wrong"})

    locked = client.post(login, {"username": "fiona", "password": "a-long-test-password-1"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session

    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    after_cool_off = client.post(login, {"username": "fiona", "password": "a-long-test-password-1"})
    assert after_cool_off.status_code == 302
    assert "_auth_user_id" in client.session


@override_settings(CVM_ADMIN_2FA=True)
def test_two_factor_login_needs_the_totp_code(client, factory_user):
    from django_otp.oath import totp
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.create(user=factory_user, name="phone", confirmed=True)
    login = reverse("admin:login")

    client.post(login, {"username": "fiona", "password": "a-long-test-password-1"})
    assert client.get(reverse("admin:index")).status_code == 302, "a password alone opens nothing"

    code = str(totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)).zfill(device.digits)
    response = client.post(
        login,
        {
            "username": "fiona",
            "password": "a-long-test-password-1",
            "otp_device": device.persistent_id,
            "otp_token": code,
        },
    )
    assert response.status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200


def test_a_bulk_action_over_a_large_selection_is_confirmed_by_reference(as_user, factory_user):
    from provisioning.services import ImportRow, devices_import

    devices_import(rows=[ImportRow(line=i, serial=f"SN-BULK-{i:05d}", product="p") for i in range(1500)], actor="t")
    client = as_user(factory_user)
    changelist = url("device_changelist") + "?state__exact=registered"
    first = Device.objects.order_by("serial").first()
    # "Select all 1500 devices" across pages, as the changelist's own link does it.
    selection = {"action": "issue_tokens_action", "select_across": "1", "index": "0", ACTION_CHECKBOX_NAME: [first.pk]}

    page = client.post(changelist, selection)
    form = re.search(r'<form method="post">(.*?)</form>', page.content.decode(), re.S).group(1)
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    fields: dict[str, list[str]] = {}
    for name, value in hidden:
        fields.setdefault(name, []).append(value)
    confirmed = client.post(changelist, {**fields, "confirm": "1", "ttl_days": "30"})

    assert "1500 device(s)" in page.content.decode()
    assert len(hidden) < 10, "the selection is named by the list's filters, not posted device by device"
    assert confirmed.status_code == 200
    assert len(tokens_on_page(confirmed.content.decode())) == 1500
    assert Device.objects.filter(state=DeviceState.TOKEN_ISSUED).count() == 1500


def test_a_bulk_action_does_nothing_when_the_selection_changed_since_its_confirmation(
    as_user, factory_user, make_device
):
    for i in range(3):
        make_device(f"SN-CH{i}", with_token=False)
    client = as_user(factory_user)
    changelist = url("device_changelist") + "?state__exact=registered"
    selection = {"action": "issue_tokens_action", "select_across": "1", "index": "0", ACTION_CHECKBOX_NAME: ["1"]}
    page = client.post(changelist, selection)
    form = re.search(r'<form method="post">(.*?)</form>', page.content.decode(), re.S).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    make_device("SN-CH3", with_token=False)  # a new device now matches the list's filter

    confirmed = client.post(changelist, {**fields, "confirm": "1", "ttl_days": "30"}, follow=True)

    assert "The selection changed since the confirmation page was shown" in confirmed.content.decode()
    assert Device.objects.filter(state=DeviceState.TOKEN_ISSUED).count() == 0
