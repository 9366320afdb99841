"""Each role does its job in a real browser (Debian's Chromium driven by Playwright).

Skipped where /usr/bin/chromium is missing (a fresh machine); `.ci/run` installs it. With
CVM_SCREENSHOT_DIR set, each main page is saved there as a PNG (the README shows docs/screenshots/).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.imports import imports_run_pending
from provisioning.models import Certificate, CertificateStatus, Device, DeviceState

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


def shot(page, name: str) -> None:
    directory = os.environ.get("CVM_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=True)


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
    shot(page, "factory-import-preview")
    page.click("#confirm-import")
    page.wait_for_selector("#import-progress")
    imports_run_pending()  # what the run_imports worker does; the page refreshes itself meanwhile
    page.wait_for_selector("text=Imported 3 new serial(s)")
    page.goto(page.base_url + "/admin/provisioning/device/")
    shot(page, "factory-devices")

    page.check("#action-toggle")
    page.select_option("select[name=action]", "issue_tokens_action")
    page.click("button[name=index]")
    page.fill("#id_ttl_days", "30")
    page.click("#confirm-action")
    page.wait_for_selector("#tokens")
    shot(page, "factory-tokens-shown-once")
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
    shot(page, "security-device")
    page.click("#revoke-device")
    page.fill("#id_reason", "reported stolen")
    shot(page, "security-revoke-confirm")
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
    shot(page, "auditor-dashboard")
    assert page.is_visible("#dashboard")

    page.goto(page.base_url + "/admin/provisioning/auditevent/")
    page.click("#changelist-filter >> text=request refused")
    shot(page, "auditor-audit-log")
    assert "AUD-001" in page.inner_text("#result_list")
    with page.expect_download() as download_info:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    assert [(row["kind"], row["serial"]) for row in rows] == [("vend_refused", "AUD-001")]

    page.goto(page.base_url + "/admin/provisioning/certificate/")
    shot(page, "auditor-certificates")
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
