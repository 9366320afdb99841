"""Each role's daily jobs in the admin, short and safe: what a confirmation page says is what happens."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone

from provisioning import services
from provisioning.models import Device, DeviceState

from .conftest import vend

pytestmark = pytest.mark.django_db


def url(name: str, *args: object) -> str:
    return reverse(f"admin:provisioning_{name}", args=args)


def tokens_on_page(html: str) -> dict[str, str]:
    return dict(re.findall(r"<tr><td>([^<]+)</td><td><code>([^<]+)</code>", html))


def text_of(html: str, element_id: str) -> str:
    """The text of the element with that id (up to its first closing tag of the same name)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"no #{element_id}"
    blocks = re.sub(r"</?(?:td|th|tr|li|p|br|div|h2|label|summary)\b[^>]*>", " ", match.group(2))
    return " ".join(unescape(re.sub(r"<[^>]+>", "", blocks)).split())


def confirm(client, target: str, page, **fields: str):
    """Post a confirmation page's form back as a browser would."""
    form = re.search(r'<form method="post">(.*?)</form>', page.content.decode(), re.S).group(1)
    hidden: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form):
        hidden.setdefault(name, []).append(unescape(value))
    return client.post(target, {**hidden, "confirm": "1", **fields}, follow=True)


@pytest.fixture
def active(api, aws_mock, make_device):
    def make(serial: str) -> Device:
        made = make_device(serial)
        assert vend(api, serial, made.token).status_code == 201
        return Device.objects.get(serial=serial)

    return make


# --- Bug 1: one blocked device no longer cancels the batch ----------------------------------------


def test_a_mixed_selection_issues_the_eligible_tokens_and_lists_the_skipped_with_the_reason(
    as_user, factory_user, make_device, active
):
    busy = active("SN-ACTIVE")
    waiting = make_device("SN-WAITING").device
    fresh = make_device("SN-FRESH", with_token=False).device
    client = as_user(factory_user)
    selection = {"action": "issue_tokens_action", ACTION_CHECKBOX_NAME: [busy.pk, waiting.pk, fresh.pk]}

    page = client.post(url("device_changelist"), selection)
    html = page.content.decode()
    expiry = (timezone.now() + timedelta(days=30)).date().isoformat()
    done = confirm(client, url("device_changelist"), page, ttl_days="30")

    summary = text_of(html, "confirm-summary")
    assert summary.startswith("3 device(s) · 2 get a token · 1 skipped · expire ")
    assert html.index('id="confirm-summary"') < html.index('id="confirm-action"') < html.index('id="confirm-devices"')
    rows = text_of(html, "confirm-devices")
    assert "SN-ACTIVE sensor active" in rows
    assert "skipped: device SN-ACTIVE is active; use reset to give it a new token" in rows
    assert "SN-WAITING sensor token issued - gets a new token; its unused one stops working" in rows
    assert 'class="errornote"' not in html, "a routine note is not an error"
    tokens = tokens_on_page(done.content.decode())
    assert set(tokens) == {"SN-WAITING", "SN-FRESH"}
    assert "device SN-ACTIVE is active" in text_of(done.content.decode(), "skipped")
    assert Device.objects.get(serial="SN-ACTIVE").state == DeviceState.ACTIVE
    assert Device.objects.get(serial="SN-FRESH").token_expires_at.date().isoformat() == expiry


def test_with_nothing_eligible_there_is_no_confirm_button_only_the_reason(as_user, security_user, active):
    device = active("SN-ONLY-ACTIVE")
    client = as_user(security_user)

    page = client.post(
        url("device_changelist"), {"action": "issue_tokens_action", ACTION_CHECKBOX_NAME: [device.pk]}
    ).content.decode()
    registered = client.get(url("device_revoke", device.pk))

    assert "confirm-action" not in page
    assert "<form method" not in page.split('id="content-main"')[1]
    assert "Nothing to do" in text_of(page, "nothing-to-do")
    assert "use reset to give it a new token" in page
    assert "1 device(s) · 0 get a token · 1 skipped" in text_of(page, "confirm-summary")
    assert "confirm-action" in registered.content.decode(), "an active device can be revoked"


def test_a_device_that_changed_since_the_page_was_shown_is_skipped_with_its_reason(as_user, factory_user, make_device):
    devices = [make_device(f"SN-RACE-{i}", with_token=False).device for i in range(2)]
    client = as_user(factory_user)
    page = client.post(
        url("device_changelist"), {"action": "issue_tokens_action", ACTION_CHECKBOX_NAME: [d.pk for d in devices]}
    )
    assert "2 get a token" in text_of(page.content.decode(), "confirm-summary")
    # Meanwhile a request claims the first one for an issuance.
    Device.objects.filter(pk=devices[0].pk).update(state=DeviceState.ISSUING, claimed_at=timezone.now())

    done = confirm(client, url("device_changelist"), page, ttl_days="30").content.decode()

    assert set(tokens_on_page(done)) == {"SN-RACE-1"}
    assert "SN-RACE-0: device SN-RACE-0 is being issued a certificate right now" in text_of(done, "skipped")


def test_a_device_that_changes_between_reading_and_writing_is_skipped_and_the_rest_issued(make_device, monkeypatch):
    for i in range(3):
        make_device(f"SN-W{i}", with_token=False)
    real = services.tokens.tokens_issue
    calls = []

    def a_vend_claims_sn_w1_first(**kwargs):
        calls.append(kwargs["serials"])
        if len(calls) == 1:
            Device.objects.filter(serial="SN-W1").update(state=DeviceState.ISSUING, claimed_at=timezone.now())
        return real(**kwargs)

    monkeypatch.setattr(services.tokens, "tokens_issue", a_vend_claims_sn_w1_first)
    outcome = services.tokens_issue_eligible(serials=["SN-W0", "SN-W1", "SN-W2"], actor="t", ttl_days=5)

    assert calls == [["SN-W0", "SN-W1", "SN-W2"], ["SN-W0", "SN-W2"]], "the first run wrote nothing"
    assert outcome.succeeded == ["SN-W0", "SN-W2"]
    assert list(outcome.skipped) == ["SN-W1"]
    assert Device.objects.get(serial="SN-W1").token_digest == ""


def test_a_mixed_revoke_revokes_the_active_and_reports_the_skipped(as_user, security_user, make_device, active):
    first, second = active("SN-R1"), active("SN-R2")
    registered = make_device("SN-R3", with_token=False).device
    client = as_user(security_user)
    selection = {"action": "revoke_action", ACTION_CHECKBOX_NAME: [first.pk, second.pk, registered.pk]}
    page = client.post(url("device_changelist"), selection)
    # Between the page and the confirmation, someone revokes SN-R2 from the command line.
    services.devices_revoke(serials=["SN-R2"], reason="stolen", actor="t")

    done = confirm(client, url("device_changelist"), page, reason="recall")

    html = page.content.decode()
    assert "3 device(s) · 2 will be revoked · 1 skipped" in text_of(html, "confirm-summary")
    assert 'class="cvm-danger-button"' in html, "revoke looks dangerous"
    messages = [str(m) for m in done.context["messages"]]
    assert "Revoked 1 device(s): SN-R1" in messages
    assert "SN-R3: skipped: device SN-R3 is registered; only an active device can be revoked" in messages
    assert "SN-R2: skipped: device SN-R2 is revoked; only an active device can be revoked" in messages
    assert dict(Device.objects.values_list("serial", "state")) == {
        "SN-R1": DeviceState.REVOKED,
        "SN-R2": DeviceState.REVOKED,
        "SN-R3": DeviceState.REGISTERED,
    }
    assert Device.objects.get(serial="SN-R2").certificates.get().revoked_reason == "stolen"


def test_a_mixed_reset_gives_the_eligible_new_tokens_and_lists_the_skipped(as_user, security_user, make_device, active):
    device = active("SN-RS1")
    registered = make_device("SN-RS2", with_token=False).device
    client = as_user(security_user)
    page = client.post(
        url("device_changelist"), {"action": "reset_action", ACTION_CHECKBOX_NAME: [device.pk, registered.pk]}
    )

    done = confirm(client, url("device_changelist"), page, reason="rma", ttl_days="7").content.decode()

    assert "2 device(s) · 1 get a new token · 1 skipped" in text_of(page.content.decode(), "confirm-summary")
    assert set(tokens_on_page(done)) == {"SN-RS1"}
    assert "SN-RS2: device SN-RS2 is registered; reset applies to active or revoked devices" in text_of(done, "skipped")


# --- Bug 2: every state change moves updated_at -----------------------------------------------------


def test_token_issue_revoke_and_reset_move_updated_at(as_user, security_user, make_device, active):
    device = active("SN-U1")
    fresh = make_device("SN-U2", with_token=False).device
    long_ago = timezone.now() - timedelta(days=30)
    client = as_user(security_user)

    def changed(pk: int, action: str, **fields: str) -> bool:
        Device.objects.filter(pk=pk).update(updated_at=long_ago)
        page = client.post(url("device_changelist"), {"action": action, ACTION_CHECKBOX_NAME: [pk]})
        confirm(client, url("device_changelist"), page, **fields)
        return Device.objects.get(pk=pk).updated_at > long_ago + timedelta(days=29)

    assert changed(fresh.pk, "issue_tokens_action", ttl_days="30")
    assert changed(device.pk, "revoke_action", reason="lost")
    assert changed(device.pk, "reset_action", reason="found", ttl_days="30")
    column = client.get(url("device_changelist")).context["cl"].list_display.index("updated")
    newest_first = client.get(url("device_changelist") + f"?o=-{column}").context["cl"].result_list
    assert [d.serial for d in newest_first][:1] == ["SN-U1"], "sorting by updated shows the device just changed"


# --- Bug 3: no link a role cannot follow; every refusal in the admin's own layout --------------------


@pytest.fixture
def fleet(active, make_device):
    """Devices in every state a page shows differently, one with a rotation pending."""
    from provisioning.models import Certificate, CertificateStatus

    active("SN-F-ACTIVE")
    revoked = active("SN-F-REVOKED")
    services.devices_revoke(serials=[revoked.serial], reason="stolen", actor="t")
    rotating = active("SN-F-ROTATING")
    pending = Certificate.objects.create(
        device=rotating,
        certificate_id="f" * 64,
        arn="arn:aws:iot:eu-west-1:123456789012:cert/" + "f" * 64,
        fingerprint_sha256="0" * 64,
        key_origin="csr",
        status=CertificateStatus.PENDING,
        thing_name=rotating.thing_name,
        issued_at=timezone.now() - timedelta(hours=1),
    )
    Device.objects.filter(pk=rotating.pk).update(pending_certificate=pending)
    make_device("SN-F-TOKEN")
    make_device("SN-F-NEW", with_token=False)
    return Device.objects.order_by("serial")


def hrefs(html: str, base: str) -> set[str]:
    from urllib.parse import urljoin, urlsplit

    found = set()
    for href in re.findall(r'href="([^"]+)"', html):
        target = urljoin(base, unescape(href))
        if urlsplit(target).path.startswith("/admin/"):
            found.add(target)
    return found


STAFF = ["factory_user", "security_user", "auditor_user", "superuser"]


@pytest.mark.parametrize("role", STAFF)
def test_a_role_never_sees_a_link_it_cannot_follow(request, as_user, fleet, role):
    client = as_user(request.getfixturevalue(role))
    starts = [
        reverse("admin:index"),
        url("device_changelist"),
        url("device_import"),
        url("certificate_changelist"),
        url("auditevent_changelist"),
        url("dynamooutbox_changelist"),
        url("product_changelist"),
        *(url("device_change", device.pk) for device in fleet),
    ]
    links: set[str] = set()
    for start in starts:
        response = client.get(start)
        if response.status_code == 403:
            continue  # not one of the role's pages; that it is refused is tested below
        assert response.status_code == 200, start
        links |= hrefs(response.content.decode(), start)

    refused = {link: client.get(link).status_code for link in sorted(links)}
    refused = {link: status for link, status in refused.items() if status not in (200, 302)}
    assert not refused
    assert len(links) > 10


@pytest.mark.parametrize(
    ("role", "target"),
    [
        ("factory_user", "certificate_changelist"),
        ("factory_user", "auditevent_changelist"),
        ("factory_user", "device_export"),
        ("auditor_user", "device_import"),
        ("auditor_user", "device_add"),
        ("outsider_user", "device_changelist"),
    ],
)
def test_every_refusal_in_the_admin_has_its_layout_and_a_way_back(request, as_user, fleet, role, target):
    client = as_user(request.getfixturevalue(role))
    came_from = "http://testserver" + reverse("admin:index")

    response = client.get(url(target), HTTP_REFERER=came_from)

    html = response.content.decode()
    assert response.status_code == 403
    assert 'id="header"' in html
    assert "CVM portal" in html
    assert 'href="/admin/" class="button default" id="way-back"' in html
    assert "not part of your role" in html


def test_the_device_page_of_a_factory_user_links_nothing_it_cannot_open(as_user, factory_user, fleet):
    device = fleet.get(serial="SN-F-ACTIVE")
    html = as_user(factory_user).get(url("device_change", device.pk)).content.decode()

    assert "/admin/provisioning/certificate/" not in html
    assert "/admin/provisioning/auditevent/" not in html
    assert "historylink" not in html
    assert device.current_certificate.certificate_id in html, "the certificate id is shown, as text"


def test_a_failed_csrf_check_in_the_admin_is_styled_too(factory_user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(factory_user)

    response = client.post(url("device_add"), {"serial": "SN-X"})

    assert response.status_code == 403
    assert "This form has expired" in response.content.decode()
    assert 'id="way-back"' in response.content.decode()


# --- 7. The device page for incident work ------------------------------------------------------------


def test_the_device_page_shows_what_its_state_makes_meaningful(as_user, security_user, superuser, fleet, settings):
    settings.CVM_ROTATION_GRACE_SECONDS = 7 * 86400
    client = as_user(security_user)

    def page(serial: str) -> str:
        return client.get(url("device_change", fleet.get(serial=serial).pk)).content.decode()

    active, rotating, revoked, waiting = (
        page(s) for s in ("SN-F-ACTIVE", "SN-F-ROTATING", "SN-F-REVOKED", "SN-F-TOKEN")
    )
    assert 'id="device-token"' not in active, "no token expiry on an active device"
    assert "expires" in text_of(waiting, "device-token")
    assert 'id="device-certificate"' not in waiting
    assert 'id="device-rotation"' not in active
    pending = fleet.get(serial="SN-F-ROTATING").pending_certificate
    confirm_by = (pending.issued_at + timedelta(days=7)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"confirm by: {confirm_by}" in text_of(rotating, "device-rotation")
    assert "revoked by: t reason: stolen" in text_of(revoked, "device-certificate")
    assert "stolen" in revoked.split('id="certificates-group"')[1], "the certificate table says why"
    assert 'class="button cvm-danger-button" id="revoke-device"' in active
    assert "revoke-device" not in revoked
    assert "reset-device" in revoked
    for html in (active, rotating, revoked, waiting):
        assert "device-internals" not in html, "internals are out of sight for staff"
        assert "version" not in html
    internals = as_user(superuser).get(url("device_change", fleet.get(serial="SN-F-ACTIVE").pk)).content.decode()
    assert "AWS clean-up pending" in internals


# --- 4. Import → the batch → tokens ---------------------------------------------------------------


def form_fields(html: str, form_id: str) -> tuple[str, dict[str, str]]:
    form = re.search(rf'<form method="post" action="([^"]*)"[^>]*id="{form_id}">(.*?)</form>', html, re.S)
    assert form, f"no form #{form_id}"
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(2)))
    return unescape(form.group(1)), {k: unescape(v) for k, v in fields.items()}


def test_an_import_lands_on_exactly_its_batch_with_tokens_one_click_away(as_user, factory_user, make_device):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from provisioning.imports import imports_run_pending

    for i in range(30):  # registered today by someone else: not part of this batch
        make_device(f"OLD-{i:03d}", with_token=False, product="thermostat")
    for i in range(5):
        make_device(f"NEW-{i:03d}", with_token=False, product="thermostat")  # already known
    lines = [f"NEW-{i:03d},{'thermostatt' if i == 7 else 'thermostat' if i % 2 else ''}" for i in range(50)]
    content = ("serial,product\n" + "\n".join(lines) + "\n").encode()
    client = as_user(factory_user)

    upload_form = client.get(url("device_import")).content.decode()
    page = client.post(url("device_import"), {"file": SimpleUploadedFile("line-4.csv", content), "product": ""})
    preview = client.get(page["Location"]).content.decode()
    confirmed = client.post(page["Location"], {"confirm": "1"})
    waiting = client.get(confirmed["Location"]).content.decode()
    imports_run_pending()
    landed = client.get(confirmed["Location"], follow=True)

    assert '<option value="thermostat">' in upload_form, "existing products to choose from"
    assert "45</strong> new serial(s) will be registered; 5 already known" in preview
    new_products = text_of(preview, "import-new-products")
    assert "This import creates 2 new product(s): default (22 rows), thermostatt (1 row)" in new_products
    assert "22 row(s) name no product: they go to default (the product box was empty)" in text_of(
        preview, "import-unnamed"
    )
    assert preview.index("import-summary") < preview.index("confirm-import") < preview.index('id="import-preview"')
    assert "6 NEW-004 registered" in text_of(preview, "import-known")
    assert '<meta http-equiv="refresh"' in waiting
    cl = landed.context["cl"]
    assert landed.redirect_chain[-1][0].startswith(url("device_changelist") + "?import_batch=")
    assert cl.result_count == 45
    assert {d.serial for d in cl.result_list} == {f"NEW-{i:03d}" for i in range(5, 50)}
    assert "Imported 45 new serial(s) from line-4.csv" in [str(m) for m in landed.context["messages"]][-1]
    assert [c for c in cl.list_display if c == "registered"], "a created-at column"
    html = landed.content.decode()
    assert "45 device(s) now · 45 registered" in text_of(html, "batch-states")

    action, fields = form_fields(html, "batch-tokens")  # "Issue tokens for these 45"
    confirmation = client.post(action, fields)
    assert "45 device(s) · 45 get a token · 0 skipped" in text_of(confirmation.content.decode(), "confirm-summary")
    done = confirm(client, action, confirmation, ttl_days="30").content.decode()

    assert len(tokens_on_page(done)) == 45
    assert Device.objects.filter(state=DeviceState.TOKEN_ISSUED).count() == 45
    assert not Device.objects.filter(serial__startswith="OLD-", state=DeviceState.TOKEN_ISSUED).exists()


def test_the_preview_can_send_rows_without_a_product_to_another_one(as_user, factory_user, make_device):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from provisioning.models import ImportBatch, ImportState

    make_device("SN-M0", with_token=False, product="meter")
    client = as_user(factory_user)
    page = client.post(url("device_import"), {"file": SimpleUploadedFile("s.csv", b"serial\nSN-M1\nSN-M2\n")})

    again = client.post(page["Location"], {"repreview": "1", "product": "meter"})
    preview = client.get(again["Location"]).content.decode()

    assert again["Location"] != page["Location"]
    assert "2 row(s) name no product: they go to meter." in text_of(preview, "import-unnamed")
    assert "import-new-products" not in preview
    assert ImportBatch.objects.get(pk=page["Location"].rstrip("/").rsplit("/", 1)[1]).state == ImportState.EXPIRED
    assert client.post(page["Location"], {"confirm": "1"}, follow=True).context["messages"], "the old one is gone"


def test_the_device_list_refuses_an_import_filter_it_cannot_use(as_user, auditor_user, make_device):
    make_device("SN-B1")
    client = as_user(auditor_user)

    assert client.get(url("device_changelist") + "?import_batch=nope").status_code == 400
    assert client.get(url("device_changelist") + "?import_batch=" + "0" * 32).status_code == 200


# --- 7. Rotation filters --------------------------------------------------------------------------------


def test_rotation_filters_list_the_pending_and_the_due(as_user, security_user, fleet, settings):
    from provisioning.models import Certificate

    old = fleet.get(serial="SN-F-ACTIVE").current_certificate
    Certificate.objects.filter(pk=old.pk).update(issued_at=timezone.now() - timedelta(days=40))
    client = as_user(security_user)

    def listed(query: str) -> set[str]:
        response = client.get(url("device_changelist") + query)
        assert response.status_code == 200, query
        return {d.serial for d in response.context["cl"].result_list}

    settings.CVM_ROTATE_AFTER_DAYS = 0
    assert listed("?rotation=pending") == {"SN-F-ROTATING"}
    assert "due (certificate older" not in client.get(url("device_changelist")).content.decode()
    assert client.get(url("device_changelist") + "?rotation=due").status_code == 400
    settings.CVM_ROTATE_AFTER_DAYS = 30
    assert listed("?rotation=due") == {"SN-F-ACTIVE"}
    page = client.get(url("device_change", fleet.get(serial="SN-F-ACTIVE").pk)).content.decode()
    assert "rotation due:" in text_of(page, "device-certificate")
    assert "due now" in text_of(page, "device-certificate")


# --- 6. Search says what it matches and takes serial prefixes -----------------------------------------


def test_search_says_what_it_matches_on_every_list(as_user, superuser, fleet):
    client = as_user(superuser)
    for name in ("device", "certificate", "auditevent", "dynamooutbox", "product"):
        html = client.get(url(f"{name}_changelist")).content.decode()
        assert 'id="searchbar_helptext"' in html, name


def test_device_search_takes_serial_prefixes_several_serials_and_certificate_ids(as_user, auditor_user, fleet):
    client = as_user(auditor_user)
    active = fleet.get(serial="SN-F-ACTIVE")

    def found(query: str) -> set[str]:
        response = client.get(url("device_changelist"), {"q": query})
        assert response.status_code == 200
        return {d.serial for d in response.context["cl"].result_list}

    assert found("SN-F-RE") == {"SN-F-REVOKED"}
    assert found("SN-F-R*") == {"SN-F-REVOKED", "SN-F-ROTATING"}
    assert found("SN-F-NEW SN-F-TOKEN") == {"SN-F-NEW", "SN-F-TOKEN"}
    assert found(active.current_certificate.certificate_id) == {"SN-F-ACTIVE"}
    assert found(active.current_certificate.fingerprint_sha256.upper()) == {"SN-F-ACTIVE"}
    nothing = client.get(url("device_changelist"), {"q": "XYZ"}).content.decode()
    assert "Nothing matches “XYZ”. Serials by their beginning" in text_of(nothing, "search-nothing")
    certificate = active.current_certificate.certificate_id
    shown = client.get(url("certificate_changelist"), {"q": certificate[:16]}).context["cl"].result_list
    assert [c.device.serial for c in shown] == ["SN-F-ACTIVE"], "the list's shortened id finds the certificate"


# --- 8. The audit log for auditors -------------------------------------------------------------------


def test_the_audit_log_reads_as_auditors_need_it(as_user, auditor_user, fleet, api):
    import csv
    import io

    from provisioning.models import AuditEvent, AuditKind

    vend(api, "SN-F-TOKEN", "wrong-token-" + "x" * 20)
    client = as_user(auditor_user)
    today = timezone.localdate()
    events = url("auditevent_changelist")

    def listed(query: str) -> list[AuditEvent]:
        response = client.get(events + query)
        assert response.status_code == 200, query
        return list(response.context["cl"].result_list)

    assert len(listed(f"?created_at__from={today}&created_at__to={today}")) == AuditEvent.objects.count()
    assert listed(f"?created_at__from={today + timedelta(days=1)}") == []
    assert listed(f"?created_at__to={today - timedelta(days=1)}") == []
    assert listed("?created_at__from=&created_at__to=") != [], "the form's empty fields mean no bound"
    assert client.get(events + "?created_at__from=yesterday").status_code == 400

    html = client.get(events + f"?kind__exact=vend_refused&created_at__from={today}").content.decode()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text_of(html, "result_list"))
    assert "request refused" in text_of(html, "result_list")
    chips = text_of(html, "active-filters")
    assert "kind: request refused" in chips
    assert f"created at: from {today}" in chips
    device = fleet.get(serial="SN-F-TOKEN")
    assert f'<a href="{url("device_change", device.pk)}">SN-F-TOKEN</a>' in html

    issued = AuditEvent.objects.filter(kind=AuditKind.CERTIFICATE_ISSUED, serial="SN-F-ACTIVE").get()
    certificate = fleet.get(serial="SN-F-ACTIVE").current_certificate
    page = client.get(url("auditevent_change", issued.pk)).content.decode()
    assert f'href="{url("certificate_change", certificate.pk)}"' in page
    assert "certificate issued (certificate_issued)" in page
    assert "historylink" not in page
    listing = client.get(events + "?serial=SN-F-ACTIVE").content.decode()
    assert f'href="{url("certificate_change", certificate.pk)}"' in listing
    export = client.get(url("auditevent_export") + "?kind__exact=vend_refused")
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [(row["kind"], row["kind_label"]) for row in rows] == [("vend_refused", "request refused")]


# --- 9. The dashboard -----------------------------------------------------------------------------------


def test_the_dashboard_leads_each_role_to_its_work(as_user, factory_user, auditor_user, security_user, fleet):
    from provisioning.models import DynamoOutbox

    DynamoOutbox.objects.filter(done_at__isnull=True).update(created_at=timezone.now() - timedelta(minutes=12))
    factory = as_user(factory_user).get(reverse("admin:index")).content.decode()
    auditor = as_user(auditor_user).get(reverse("admin:index")).content.decode()
    security = as_user(security_user).get(reverse("admin:index")).content.decode()

    assert f'href="{url("device_changelist")}?state__exact=active" id="tile-active"' in auditor
    assert '<span class="n">5</span>devices in all' in auditor
    assert "the oldest for 12 min" in text_of(auditor, "outbox")
    assert "DynamoDB is 12 min behind" in text_of(auditor, "outbox-behind")
    assert '<text class="axis"' in auditor
    assert "per day</text>" in auditor
    assert "Recent actions" not in factory + auditor + security
    assert "Import serials from a CSV" in factory
    assert "shortcuts-audit" not in factory
    assert "shortcuts-factory" not in auditor
    assert "Refused requests today" in text_of(auditor, "shortcuts-audit")
    assert "Rotations in progress (1)" in text_of(security, "shortcuts-incidents")
    assert "outbox-behind" not in factory, "the mirror's health is for those who read the history"


# --- 10. The tokens page for bulk use -----------------------------------------------------------------


def test_the_tokens_page_names_its_batch_and_offers_copy_all(as_user, factory_user, make_device):
    import base64

    devices = [make_device(f"SN-T{i}", with_token=False, product="thermostat").device for i in range(3)]
    client = as_user(factory_user)
    selection = {"action": "issue_tokens_action", ACTION_CHECKBOX_NAME: [d.pk for d in devices]}

    first = confirm(client, url("device_changelist"), client.post(url("device_changelist"), selection), ttl_days="30")
    expiry = Device.objects.get(serial="SN-T0").token_expires_at
    second = confirm(client, url("device_changelist"), client.post(url("device_changelist"), selection), ttl_days="30")

    html = first.content.decode()
    summary = text_of(html, "tokens-summary")
    assert summary.startswith(f"3 token(s) · expire {expiry:%Y-%m-%d %H:%M:%S} UTC · product thermostat")
    names = [re.search(r'download="([^"]+)"', r.content.decode()).group(1) for r in (first, second)]
    assert all(re.fullmatch(r"tokens-thermostat-\d{8}-\d{6}-3-[0-9a-f]{4}\.csv", name) for name in names)
    assert names[0] != names[1], "each batch downloads under its own name"
    assert '<script src="/static/provisioning/tokens.js" defer></script>' in html
    assert 'id="copy-tokens" data-count="3" hidden' in html, "without script the button stays hidden"
    textarea = unescape(re.search(r'<textarea id="tokens-csv"[^>]*>(.*?)</textarea>', html, re.S).group(1))
    download = base64.b64decode(re.search(r'href="data:text/csv;base64,([^"]+)"', html).group(1)).decode()
    assert textarea == download
    assert textarea.startswith("serial,token,expires_at\nSN-T0,")
