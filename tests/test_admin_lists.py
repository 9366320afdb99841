"""Admin list URLs accept the list's declared filters, search, ordering and paging; anything else is a 400."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from provisioning.admin import DeclaredLookupsOnly
from provisioning.models import Device

from .conftest import vend

pytestmark = pytest.mark.django_db

REGISTERED_MODELS = [model for model in apps.get_models() if admin.site.is_registered(model)]
REGISTERED = sorted(f"{model._meta.app_label}_{model._meta.model_name}" for model in REGISTERED_MODELS)


def changelist(name: str) -> str:
    return reverse(f"admin:{name}_changelist")


@pytest.fixture
def busy_portal(client, superuser, make_device, api, aws_mock):
    """A row in every list: devices in several states, a certificate, audit events, outbox rows, logins, an
    API key, a webhook endpoint and its deliveries."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from provisioning.services.apikeys import api_key_create
    from provisioning.services.webhooks import webhook_add

    api_key_create(name="line-1", role="factory", actor="test")
    webhook_add(url="https://erp.example.com/hooks", event_types=[], actor="test")  # a delivery per device
    issued = make_device("SN-LIST-1")
    assert vend(api, issued.serial, issued.token).status_code == 201
    make_device("SN-LIST-2")
    make_device("SN-LIST-3", with_token=False, product="meter")
    vend(api, "SN-LIST-2", "wrong-token")
    TOTPDevice.objects.create(user=superuser, name="phone", confirmed=True)
    login = reverse("admin:login")
    client.post(login, {"username": "root", "password": "wrong"})
    client.post(login, {"username": "root", "password": "a-long-test-password-1"})
    client.force_login(superuser)
    return client


def test_every_registered_admin_takes_the_rule():
    admins = [admin.site.get_model_admin(model) for model in REGISTERED_MODELS]
    assert len(admins) >= 11, "ours, Django's users and groups, django-axes' and django-otp's"
    assert all(isinstance(model_admin, DeclaredLookupsOnly) for model_admin in admins)


@pytest.mark.parametrize("name", REGISTERED)
def test_admin_list_refuses_undeclared_lookups(busy_portal, name):
    model = next(m for m in REGISTERED_MODELS if f"{m._meta.app_label}_{m._meta.model_name}" == name)
    pk = model._meta.pk.name
    for query in (f"{pk}__gte=0", f"{pk}__regex=.*", "no_such_field=1", f"{pk}=1&p=1&o=1"):
        response = busy_portal.get(changelist(name) + "?" + query)

        assert response.status_code == 400, query
        assert "This list cannot be filtered by" in response.content.decode()
        assert f"{pk}" in response.content.decode() or "no_such_field" in response.content.decode()


@pytest.mark.parametrize("name", REGISTERED)
def test_admin_list_follows_every_link_it_shows(busy_portal, name):
    """Filters, date ranges, sorting, paging, "show all", facets: whatever the admin puts in its own URLs."""
    page = busy_portal.get(changelist(name))
    assert page.status_code == 200
    links = {unescape(href) for href in re.findall(r'href="(\?[^"]*)"', page.content.decode())}
    links |= {"?e=1", "?_changelist_filters=q%3Dx", "?p=1", "?all=", "?q=SN-LIST-1", "?o=-1", "?_facets=True"}
    for link in sorted(links):
        response = busy_portal.get(changelist(name) + link)
        assert response.status_code == 200, f"{link}: {response.status_code}"


def test_device_list_refuses_regex_and_token_digest_lookups(as_user, factory_user, make_device):
    make_device("SN-0001Q")
    client = as_user(factory_user)
    for query in (
        "serial__regex=(.*[0-9]){4}Q",
        "token_digest__startswith=",
        "token_digest__startswith=a",
        "product__name__regex=.",
        "current_certificate__fingerprint_sha256__startswith=0",
        "state__exact=registered&token_digest__gt=0",
    ):
        response = client.get(changelist("provisioning_device") + "?" + query)

        assert response.status_code == 400, query
        assert "SN-0001Q" not in response.content.decode()


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("provisioning_auditevent", "data__contains=x"),
        ("provisioning_auditevent", "hash__startswith=0"),
        ("provisioning_dynamooutbox", "item__contains=x"),
        ("provisioning_dynamooutbox", "data__contains=x"),
    ],
)
def test_json_lookups_on_audit_and_outbox_lists_are_a_400_not_a_500(as_user, auditor_user, make_device, name, query):
    make_device("SN-JSON")
    client = as_user(auditor_user)
    client.raise_request_exception = False

    assert client.get(changelist(name) + "?" + query).status_code == 400


@pytest.mark.parametrize("name", ["provisioning_device", "provisioning_certificate", "provisioning_auditevent"])
def test_csv_export_refuses_undeclared_lookups_too(as_user, auditor_user, make_device, name):
    make_device("SN-EXPORT")
    response = as_user(auditor_user).get(reverse(f"admin:{name}_export") + "?id__gte=0")

    assert response.status_code == 400


def test_a_declared_filter_with_a_value_it_cannot_use_is_a_400_not_a_redirect(as_user, auditor_user, make_device):
    make_device("SN-F1", product="meter")
    make_device("SN-F2", product="sensor")
    client = as_user(auditor_user)
    for query in ("created_at__gte=not-a-date", "created_at__lt=2026-13-45", "product__id__exact=abc"):
        response = client.get(changelist("provisioning_device") + "?" + query)

        assert response.status_code == 400, query
        assert "A filter value this list cannot use" in response.content.decode()
    from provisioning.services import ImportRow, devices_import

    devices_import(rows=[ImportRow(line=i, serial=f"SN-PAGE-{i:03d}", product="p") for i in range(150)], actor="t")
    for page in ("999", "0", "-1"):  # two pages of 100
        response = client.get(changelist("provisioning_device") + f"?state__exact=registered&p={page}")

        assert response.status_code == 400, page
        assert f"This list has no page {page}." in response.content.decode()


def test_the_device_pages_history_links_are_declared_filters(busy_portal):
    device = Device.objects.get(serial="SN-LIST-1")
    page = busy_portal.get(reverse("admin:provisioning_device_change", args=[device.pk])).content.decode()
    certificates, events = (
        unescape(link) for link in re.findall(r'href="([^"]+)">(?:certificates|audit events)', page)
    )

    certificate_list = busy_portal.get(certificates)
    event_list = busy_portal.get(events)

    assert certificate_list.status_code == event_list.status_code == 200
    assert [c.device.serial for c in certificate_list.context["cl"].result_list] == ["SN-LIST-1"]
    assert {e.serial for e in event_list.context["cl"].result_list} == {"SN-LIST-1"}
    assert "By serial" in event_list.content.decode(), "the filter in use is shown, with a way back"
