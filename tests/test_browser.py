"""Each role does its job in a real browser (Debian's Chromium driven by Playwright), with a few hundred
devices: the factory's import lands on exactly its batch and issues its tokens, a mixed selection does
the eligible devices and reports the skipped ones, security works an incident from the device page,
an auditor reads the history, no role sees a link it cannot follow, every refusal is styled, and a
phone reaches the filters and actions without scrolling past the list.

Skipped where /usr/bin/chromium is missing (a fresh machine); `.ci/run` installs it. With
CVM_SCREENSHOT_DIR set, each job's pages are saved there as PNGs (the README shows docs/screenshots/).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.imports import imports_run_pending
from provisioning.models import Certificate, CertificateStatus, Device, DeviceState, Product

from .conftest import vend

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a-long-test-password-1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    # The sync Playwright API keeps an event loop running in this thread for the whole module;
    # Django's ORM calls made by the tests and fixtures are still plain synchronous calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.base_url = live_server.url
    yield page
    context.close()


def shot(page, name: str, *, full_page: bool = True) -> None:
    directory = os.environ.get("CVM_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=full_page)


def log_in(page, username: str) -> None:
    page.goto(page.base_url + "/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def test_factory_imports_issues_tokens_and_downloads_them(page, factory_user, tmp_path, aws_mock):
    log_in(page, "fiona")
    page.goto(page.base_url + "/admin/provisioning/device/")
    page.click("text=Import CSV")
    source = tmp_path / "serials.csv"
    source.write_text("serial,product\nFAC-001,thermostat\nFAC-002,thermostat\nFAC-003,meter\n")
    page.set_input_files("#id_file", str(source))
    page.click("#preview-import")
    assert "3 new serial(s) will be registered" in page.inner_text("#import-summary")
    page.click("#confirm-import")
    page.wait_for_selector("#import-progress")
    imports_run_pending()  # what the run_imports worker does; the page refreshes itself meanwhile
    page.wait_for_selector("text=Imported 3 new serial(s)")
    page.goto(page.base_url + "/admin/provisioning/device/")

    page.check("#action-toggle")
    page.select_option("select[name=action]", "issue_tokens_action")
    page.click("button[name=index]")
    page.fill("#id_ttl_days", "30")
    page.click("#confirm-action")
    page.wait_for_selector("#tokens")
    with page.expect_download() as download_info:
        page.click("#download-tokens")
    rows = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))

    assert [row["serial"] for row in rows] == ["FAC-001", "FAC-002", "FAC-003"]
    assert set(Device.objects.values_list("state", flat=True)) == {DeviceState.TOKEN_ISSUED}
    page.goto(page.base_url + "/admin/provisioning/device/")
    assert all(row["token"] not in page.content() for row in rows)


def test_security_revokes_a_device(page, security_user, make_device, api, aws_mock):
    made = make_device("SEC-001")
    assert vend(api, "SEC-001", made.token).status_code == 201
    log_in(page, "sam")
    page.goto(page.base_url + f"/admin/provisioning/device/{made.device.pk}/change/")
    page.click("#revoke-device")
    page.fill("#id_reason", "reported stolen")
    page.click("#confirm-action")
    page.wait_for_selector("text=Revoked 1 device(s): SEC-001")

    assert Device.objects.get(serial="SEC-001").state == DeviceState.REVOKED
    certificate = Certificate.objects.get()
    assert (certificate.status, certificate.revoked_reason) == (CertificateStatus.REVOKED, "reported stolen")


def test_auditor_filters_history_exports_csv_and_finds_nothing_to_change(
    page, auditor_user, make_device, api, aws_mock
):
    for serial in ("AUD-001", "AUD-002"):
        made = make_device(serial)
        vend(api, serial, made.token)
    vend(api, "AUD-001", "a-wrong-token")
    log_in(page, "aude")
    assert page.is_visible("#dashboard")

    page.goto(page.base_url + "/admin/provisioning/auditevent/")
    page.click("#changelist-filter >> text=request refused")
    assert "AUD-001" in page.inner_text("#result_list")
    with page.expect_download() as download_info:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    assert [(row["kind"], row["serial"]) for row in rows] == [("vend_refused", "AUD-001")]

    page.goto(page.base_url + "/admin/provisioning/certificate/")
    for target in (
        "/admin/provisioning/certificate/",
        "/admin/provisioning/device/",
        "/admin/provisioning/auditevent/",
    ):
        page.goto(page.base_url + target)
        assert page.locator("select[name=action]").count() == 0
        assert page.locator("a.addlink").count() == 0
    page.goto(page.base_url + "/admin/provisioning/device/")
    page.click("#result_list >> text=AUD-002")
    assert page.locator("input[name=_save]").count() == 0
    assert page.locator("#revoke-device").count() == 0
    assert page.locator("a.deletelink").count() == 0


# --- Each role's jobs (issue #12) ---------------------------------------------------------------------


def summary_of(page, selector: str) -> str:
    return " ".join(page.inner_text(selector).split())


def follow(page, selector: str) -> None:
    """Click a link or button that opens another page, and wait for that page."""
    with page.expect_navigation():
        page.click(selector)


def top_of(page, selector: str) -> float:
    return page.locator(selector).first.bounding_box()["y"]


def test_factory_import_lands_on_exactly_its_batch_and_issues_its_tokens(page, factory_user, make_device, tmp_path):
    from provisioning.services import ImportRow, devices_import

    # A few hundred devices registered earlier today by another import: not part of this batch.
    devices_import(rows=[ImportRow(line=i, serial=f"OLD-{i:04d}", product="thermostat") for i in range(280)], actor="t")
    make_device("LINE4-0003", with_token=False, product="thermostat")  # already known
    lines = [f"LINE4-{i:04d},{'thermostatt' if i == 11 else '' if i % 50 == 7 else 'thermostat'}" for i in range(500)]
    source = tmp_path / "line-4-2026-11-29.csv"
    source.write_text("serial,product\n" + "\n".join(lines) + "\n")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page.base_url)

    log_in(page, "fiona")
    follow(page, "#shortcuts-factory >> text=Import serials from a CSV")
    page.set_input_files("#id_file", str(source))
    page.fill("#id_product", "thermostat")
    follow(page, "#preview-import")
    assert "499 new serial(s) will be registered; 1 already known" in summary_of(page, "#import-summary")
    assert "thermostatt (1 row)" in page.inner_text("#import-new-products")
    assert page.locator("#import-known >> text=LINE4-0003").count() == 1
    assert top_of(page, "#confirm-import") < top_of(page, "#import-preview"), "the button comes before the rows"
    shot(page, "factory-import-preview", full_page=False)

    follow(page, "#confirm-import")
    page.wait_for_selector("#import-progress")
    imports_run_pending()  # what the run_imports worker does; the page refreshes itself meanwhile
    page.wait_for_selector("#batch-banner")
    assert "import_batch=" in page.url
    assert "499 device(s) now · 499 registered" in summary_of(page, "#batch-states")
    assert "499 devices" in page.inner_text("#changelist .paginator")
    serials = page.locator("#result_list tbody th a").all_inner_texts()
    assert len(serials) == 100
    assert all(serial.startswith("LINE4-") for serial in serials)
    shot(page, "factory-import-batch", full_page=False)

    follow(page, "#issue-batch-tokens")  # "Issue tokens for these 499"
    assert summary_of(page, "#confirm-summary").startswith("499 device(s) · 499 get a token · 0 skipped · expire ")
    page.fill("#id_ttl_days", "30")
    shot(page, "factory-tokens-confirm", full_page=False)
    follow(page, "#confirm-action")
    page.wait_for_selector("#tokens")
    assert summary_of(page, "#tokens-summary").startswith("499 token(s) · expire ")
    shot(page, "factory-tokens-shown-once", full_page=False)
    with page.expect_download() as download_info:
        page.click("#download-tokens")
    download = download_info.value
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    page.click("#copy-tokens")
    page.wait_for_selector("#copy-status >> text=Copied 499 token(s)")
    copied = page.evaluate("navigator.clipboard.readText()")

    assert download.suggested_filename.startswith("tokens-mixed-"), "thermostat and the typo thermostatt"
    assert len(rows) == 499
    assert copied == Path(download.path()).read_text()
    issued = set(Device.objects.filter(state=DeviceState.TOKEN_ISSUED).values_list("serial", flat=True))
    assert issued == {row["serial"] for row in rows}
    assert not any(serial.startswith("OLD-") for serial in issued), "only the batch just imported"


def test_factory_mixed_selection_issues_the_eligible_and_reports_the_skipped(
    page, factory_user, make_device, api, aws_mock
):
    for serial in ("MIX-1", "MIX-2"):
        made = make_device(serial)
        assert vend(api, serial, made.token).status_code == 201
    make_device("MIX-3")
    make_device("MIX-4", with_token=False)
    log_in(page, "fiona")
    page.goto(page.base_url + "/admin/provisioning/device/?q=MIX-")

    page.check("#action-toggle")
    page.select_option("select[name=action]", "issue_tokens_action")
    follow(page, "button[name=index]")
    assert summary_of(page, "#confirm-summary").startswith("4 device(s) · 2 get a token · 2 skipped")
    assert "use reset to give it a new token" in page.inner_text("#confirm-devices")
    shot(page, "factory-mixed-confirm")
    follow(page, "#confirm-action")
    page.wait_for_selector("#tokens")

    assert set(page.locator("#tokens tbody td:first-child").all_inner_texts()) == {"MIX-3", "MIX-4"}
    assert "MIX-1: device MIX-1 is active" in page.inner_text("#skipped")
    assert Device.objects.get(serial="MIX-1").state == DeviceState.ACTIVE

    page.goto(page.base_url + "/admin/provisioning/device/?q=MIX-1")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "issue_tokens_action")
    follow(page, "button[name=index]")
    assert page.locator("#confirm-action").count() == 0, "nothing eligible: no button, only the reason"
    assert "Nothing to do" in page.inner_text("#nothing-to-do")


def test_security_works_an_incident_from_the_device_page(page, security_user, make_device, api, aws_mock):
    from datetime import timedelta

    from django.utils import timezone

    made = make_device("INC-001")
    assert vend(api, "INC-001", made.token).status_code == 201
    device = made.device
    pending = Certificate.objects.create(
        device=device,
        certificate_id="e" * 64,
        arn="arn:aws:iot:eu-west-1:123456789012:cert/" + "e" * 64,
        fingerprint_sha256="1" * 64,
        key_origin="csr",
        status=CertificateStatus.PENDING,
        thing_name=device.thing_name,
        issued_at=timezone.now() - timedelta(hours=2),
    )
    Device.objects.filter(pk=device.pk).update(pending_certificate=pending)
    log_in(page, "sam")
    follow(page, "#shortcuts-incidents >> text=Rotations in progress (1)")
    follow(page, "#result_list >> text=INC-001")

    assert page.is_visible("#device-rotation")
    assert page.locator("#device-token").count() == 0, "no token expiry on an active device"
    assert page.locator("#device-internals").count() == 0
    red = page.eval_on_selector("#revoke-device", "e => getComputedStyle(e).backgroundColor")
    plain = page.eval_on_selector("#reset-device", "e => getComputedStyle(e).backgroundColor")
    assert red != plain, "revoke is a distinct, dangerous-looking control"
    shot(page, "security-device")
    follow(page, "#revoke-device")
    assert summary_of(page, "#confirm-summary") == "1 device(s) · 1 will be revoked · 0 skipped"
    page.fill("#id_reason", "reported stolen")
    shot(page, "security-revoke-confirm", full_page=False)
    follow(page, "#confirm-action")
    page.wait_for_selector("text=Revoked 1 device(s): INC-001")

    assert "reported stolen" in page.inner_text("#certificates-group")
    assert "staff:sam" in page.inner_text("#certificates-group")
    assert page.locator("#revoke-device").count() == 0
    shot(page, "security-revoked")
    assert Device.objects.get(serial="INC-001").state == DeviceState.REVOKED


def test_auditor_reads_the_history_by_date_with_links_and_visible_filters(
    page, auditor_user, make_device, api, aws_mock
):
    from django.utils import timezone

    for serial in ("AUD-101", "AUD-102"):
        made = make_device(serial)
        vend(api, serial, made.token)
    vend(api, "AUD-101", "a-wrong-token")
    log_in(page, "aude")
    assert page.is_visible("#dashboard")
    shot(page, "auditor-dashboard")
    follow(page, "#tile-active")
    assert page.locator("#result_list tbody tr").count() == 2
    assert "state: active" in summary_of(page, "#active-filters")

    page.goto(page.base_url + "/admin/provisioning/auditevent/")
    page.click("#toggle-nav-sidebar")  # room for the columns; the browser remembers it
    follow(page, "#changelist-filter >> text=certificate issued")
    today = timezone.localdate().isoformat()
    page.fill("input[name=created_at__from]", today)
    page.fill("input[name=created_at__to]", today)
    follow(page, ".cvm-date-range input[type=submit]")
    chips = summary_of(page, "#active-filters")
    assert "kind: certificate issued" in chips
    assert f"created at: {today}" in chips
    assert page.locator("#result_list tbody tr").count() == 2
    time = page.inner_text("#result_list tbody tr >> nth=0 >> td.field-time")
    assert time.endswith(" UTC")
    assert len(time.split()[1]) == 8, "to the second"
    shot(page, "auditor-audit-log")
    certificate = Certificate.objects.get(device__serial="AUD-102")
    follow(page, f"#result_list >> text={certificate.certificate_id[:16]}…")
    assert certificate.certificate_id in page.inner_text("#content-main")
    follow(page, "text=AUD-102")
    assert page.is_visible("#device-certificate")
    page.goto(page.base_url + "/admin/provisioning/certificate/")
    shot(page, "auditor-certificates", full_page=False)


@pytest.mark.parametrize("username", ["fiona", "sam", "aude"])
def test_no_role_sees_a_link_it_cannot_follow_and_refusals_are_styled(
    page, factory_user, security_user, auditor_user, make_device, api, aws_mock, username
):
    made = make_device("LNK-001")
    assert vend(api, "LNK-001", made.token).status_code == 201
    device = made.device
    log_in(page, username)
    pages = ["/admin/", "/admin/provisioning/device/", f"/admin/provisioning/device/{device.pk}/change/"]
    followed = set()
    for target in pages:
        page.goto(page.base_url + target)
        links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
        for link in links:
            if not link.startswith(page.base_url + "/admin/") or link in followed:
                continue
            followed.add(link)
            assert page.request.get(link).status != 403, f"{username} sees {link} on {target}"
    assert len(followed) > 10

    device_page = page.base_url + f"/admin/provisioning/device/{device.pk}/change/"
    # Nobody adds certificates; arriving from the device page, as from a link or a bookmark opened there.
    page.goto(page.base_url + "/admin/provisioning/certificate/add/", referer=device_page)
    assert page.is_visible("#header")
    assert "not part of your role" in page.inner_text("#forbidden-reason")
    if username == "fiona":
        shot(page, "factory-refused", full_page=False)
    follow(page, "#way-back")
    assert page.url.endswith(f"/admin/provisioning/device/{device.pk}/change/")


def test_on_a_phone_the_filters_and_actions_come_before_the_list(browser, live_server, security_user):
    from provisioning.services import ImportRow, devices_import

    devices_import(rows=[ImportRow(line=i, serial=f"PH-{i:04d}", product="p") for i in range(150)], actor="t")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.base_url = live_server.url
    try:
        log_in(page, "sam")
        page.goto(page.base_url + "/admin/provisioning/device/")
        filters, actions, rows = (top_of(page, s) for s in ("#changelist-filter", ".actions", "#result_list"))
        shot(page, "security-phone-list", full_page=False)
        assert filters < rows
        assert actions < rows
        assert actions < 844, "the actions are on the first screen"
        follow(page, "#changelist-filter >> text=registered")
        assert "state: registered" in summary_of(page, "#active-filters")
    finally:
        context.close()


def test_a_superuser_shapes_a_product_on_its_admin_page(page, superuser, aws_mock):
    log_in(page, "root")
    page.goto(page.base_url + "/admin/provisioning/product/add/")
    page.fill("#id_name", "thermostat")
    page.fill("#id_description", "wall thermostat, second generation")
    page.fill("#id_iot_policy", "cvm-device-policy-thermostat")
    page.fill("#id_thing_type", "thermostat-v2")
    page.fill("#id_thing_groups_text", "eu ota-wave-1")
    page.fill("#id_rotate_after_days", "365")
    shot(page, "superuser-product")
    page.click("input[name=_save]")
    page.wait_for_selector("text=Created in AWS IoT")

    product = Product.objects.get(name="thermostat")
    assert (product.thing_type, product.thing_groups, product.rotate_after_days) == (
        "thermostat-v2",
        ["eu", "ota-wave-1"],
        365,
    )
    assert aws_mock.iot.describe_thing_group(thingGroupName="ota-wave-1")["thingGroupName"] == "ota-wave-1"
