"""CSV imports through the admin: the upload stays on the server, the confirmation names it, a worker imports it."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from urllib.parse import urlencode

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from provisioning import imports
from provisioning.imports import _claim, _ClaimLost, _import_claimed, imports_expire, imports_run_pending
from provisioning.models import AuditEvent, AuditKind, Device, DynamoOutbox, ImportBatch, ImportState

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:provisioning_device_import")


def csv_of(count: int, prefix: str = "FAC") -> bytes:
    lines = ["serial,product"] + [f"{prefix}-{i:07d},{'meter' if i % 2 else ''}" for i in range(count)]
    return ("\n".join(lines) + "\n").encode()


def upload(client, content: bytes, name: str = "batch.csv", product: str = "sensor") -> str:
    """Upload a file; returns the address of its page."""
    response = client.post(IMPORT_URL, {"file": SimpleUploadedFile(name, content, "text/csv"), "product": product})
    assert response.status_code == 302, response.content.decode()[:2000]
    return response["Location"]


def confirm_form(html: str) -> dict[str, str]:
    """The fields the confirmation form would post, read from the page as a browser would."""
    form = re.search(r'<form method="post">(.*?)</form>', html, re.S).group(1)
    fields = {
        name: unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    }
    submit = re.search(r'<input type="submit" name="([^"]+)" value="([^"]*)"', form)
    return {**fields, submit.group(1): unescape(submit.group(2))}


def test_a_large_upload_is_confirmed_by_reference_and_imported(as_user, factory_user):
    client = as_user(factory_user)
    content = csv_of(50_000)

    page = upload(client, content)
    preview = client.get(page).content.decode()
    fields = confirm_form(preview)
    # Posted as a browser posts this form.
    confirmed = client.post(page, urlencode(fields), content_type="application/x-www-form-urlencoded")

    assert "<strong>50000</strong> new serial(s) will be registered" in preview
    assert set(fields) == {"csrfmiddlewaretoken", "confirm"}, "only the page's address names the batch"
    assert confirmed.status_code == 302
    assert len(confirmed.wsgi_request.body) < 200 < len(content) // 1000
    assert Device.objects.count() == 0, "the import runs in the worker, not in the request"
    assert ImportBatch.objects.get().state == ImportState.QUEUED

    [batch] = imports_run_pending()

    assert (batch.state, batch.created_count, batch.already_known_count, batch.products_created) == (
        ImportState.IMPORTED,
        50_000,
        0,
        2,
    )
    assert Device.objects.count() == 50_000
    assert Device.objects.filter(product__name="meter").count() == Device.objects.filter(product__name="sensor").count()
    assert DynamoOutbox.objects.filter(done_at__isnull=True).count() == 50_000
    assert AuditEvent.objects.filter(kind=AuditKind.DEVICE_REGISTERED, actor="staff:fiona").count() == 50_000
    summary = AuditEvent.objects.get(kind=AuditKind.SERIALS_IMPORTED)
    assert summary.data == {
        "batch": str(batch.pk),
        "file": "batch.csv",
        "uploaded_by": "staff:fiona",
        "created": 50_000,
        "already_known": 0,
        "products_created": 2,
    }
    assert bytes(ImportBatch.objects.get().content) == b"", "the file is not kept once imported"
    assert "Imported 50000 new serial(s); 0 already known; 2 new product(s)" in client.get(page).content.decode()


def test_confirming_twice_does_nothing_the_second_time(as_user, factory_user, make_device):
    make_device("FAC-0000000", with_token=False)
    client = as_user(factory_user)
    page = upload(client, csv_of(5))
    fields = confirm_form(client.get(page).content.decode())

    first = client.post(page, fields)
    second = client.post(page, fields, follow=True)
    imports_run_pending()
    third = client.post(page, fields, follow=True)
    imports_run_pending()

    assert first.status_code == 302
    for response in (second, third):
        assert "already confirmed or has expired; nothing was done again" in response.content.decode()
    assert Device.objects.count() == 5
    assert AuditEvent.objects.filter(kind=AuditKind.SERIALS_IMPORTED, actor="staff:fiona").count() == 1
    assert AuditEvent.objects.filter(kind=AuditKind.DEVICE_REGISTERED, actor="staff:fiona").count() == 4


@pytest.mark.parametrize("role", ["auditor_user", "outsider_user"])
def test_a_role_without_the_import_permission_cannot_see_or_confirm_an_upload(request, as_user, factory_user, role):
    page = upload(as_user(factory_user), csv_of(3))
    other = as_user(request.getfixturevalue(role))

    assert other.get(page).status_code == 403
    assert other.post(page, {"confirm": "1"}).status_code == 403
    imports_run_pending()
    assert ImportBatch.objects.get().state == ImportState.PREVIEWED
    assert Device.objects.count() == 0


def test_another_user_with_the_import_permission_may_confirm(client, factory_user, security_user):
    client.force_login(factory_user)
    page = upload(client, csv_of(3))
    client.force_login(security_user)

    assert client.post(page, {"confirm": "1"}).status_code == 302
    imports_run_pending()

    batch = ImportBatch.objects.get()
    assert (batch.state, batch.uploaded_by, batch.confirmed_by) == (ImportState.IMPORTED, "staff:fiona", "staff:sam")
    assert AuditEvent.objects.get(kind=AuditKind.SERIALS_IMPORTED).actor == "staff:sam"


def test_the_page_shows_progress_and_refreshes_until_the_import_is_done(as_user, factory_user):
    client = as_user(factory_user)
    page = upload(client, csv_of(3))
    client.post(page, {"confirm": "1"})

    waiting = client.get(page).content.decode()
    batch_id, claim_id = _claim(timezone.now())
    ImportBatch.objects.filter(pk=batch_id).update(writing_started_at=timezone.now())
    writing = client.get(page).content.decode()
    _import_claimed(batch_id, claim_id)
    done = client.get(page).content.decode()

    assert '<meta http-equiv="refresh"' in waiting
    assert "Waiting for the import worker" in waiting
    assert "Writing 3 serial(s)" in writing
    assert "all or none" in writing
    assert '<meta http-equiv="refresh"' in writing
    assert '<meta http-equiv="refresh"' not in done
    assert "Imported 3 new serial(s)" in done


def test_an_import_that_fails_part_way_leaves_nothing_and_says_so(as_user, factory_user, monkeypatch):
    client = as_user(factory_user)
    page = upload(client, csv_of(1000))
    client.post(page, {"confirm": "1"})

    def outbox_fails(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("provisioning.services.registration.outbox_insert", outbox_fails)
    [batch] = imports_run_pending()

    assert batch.state == ImportState.FAILED
    assert "nothing was imported" in batch.error
    assert Device.objects.count() == DynamoOutbox.objects.count() == 0
    assert not AuditEvent.objects.filter(kind__in=[AuditKind.DEVICE_REGISTERED, AuditKind.SERIALS_IMPORTED]).exists()
    assert "nothing was imported" in client.get(page).content.decode()


def test_a_batch_whose_worker_died_is_imported_once_by_another(as_user, factory_user, monkeypatch):
    client = as_user(factory_user)
    page = upload(client, csv_of(10))
    client.post(page, {"confirm": "1"})
    batch_id, slow_claim = _claim(timezone.now())  # worker A
    assert _claim(timezone.now()) is None, "a fresh claim is not taken over"
    ImportBatch.objects.filter(pk=batch_id).update(started_at=timezone.now() - imports.CLAIM_TIMEOUT * 2)
    parse = imports.serials_parse_csv

    def a_stalls_while_reading(*args, **kwargs):
        rows = parse(*args, **kwargs)
        monkeypatch.setattr(imports, "serials_parse_csv", parse)
        [taken_over] = imports_run_pending()  # meanwhile worker B takes the batch over and imports it
        assert taken_over.state == ImportState.IMPORTED
        return rows

    monkeypatch.setattr(imports, "serials_parse_csv", a_stalls_while_reading)
    with pytest.raises(_ClaimLost):
        _import_claimed(batch_id, slow_claim)  # A goes on to write: its claim is gone, it writes nothing

    assert ImportBatch.objects.get().state == ImportState.IMPORTED
    assert Device.objects.count() == 10
    assert AuditEvent.objects.filter(kind=AuditKind.SERIALS_IMPORTED).count() == 1
    assert AuditEvent.objects.filter(kind=AuditKind.DEVICE_REGISTERED).count() == 10


def test_an_upload_nobody_confirms_expires_and_its_file_is_dropped(as_user, factory_user):
    client = as_user(factory_user)
    page = upload(client, csv_of(3))
    ImportBatch.objects.update(uploaded_at=timezone.now() - timedelta(hours=25))

    response = client.post(page, {"confirm": "1"}, follow=True)
    imports_expire()

    assert "already confirmed or has expired" in response.content.decode()
    batch = ImportBatch.objects.get()
    assert (batch.state, bytes(batch.content)) == (ImportState.EXPIRED, b"")
    assert Device.objects.count() == 0


def test_an_upload_with_bad_rows_is_not_kept(as_user, factory_user):
    client = as_user(factory_user)
    response = client.post(IMPORT_URL, {"file": SimpleUploadedFile("s.csv", b"serial\nok-1\nnot ok\n")})
    not_utf8 = client.post(IMPORT_URL, {"file": SimpleUploadedFile("s.csv", b"serial\n\xff\xfe\n")})

    assert response.status_code == not_utf8.status_code == 200
    assert "line 3: &#x27;not ok&#x27; is not a valid serial" in response.content.decode()
    assert "the file is not UTF-8 text" in not_utf8.content.decode()
    assert ImportBatch.objects.count() == 0


def test_run_imports_once_reports_each_batch(as_user, factory_user, capsys):
    client = as_user(factory_user)
    page = upload(client, csv_of(4), name="line-7.csv")
    client.post(page, {"confirm": "1"})

    call_command("run_imports", "--once")

    assert "line-7.csv: imported 4 new serial(s); 0 already known; 2 new product(s)" in capsys.readouterr().out
