"""Each role sees and does exactly what SPEC §8 allows, enforced on the server (403), not just hidden."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from provisioning.models import AuditEvent, AuditKind, Certificate, Device, DeviceState

from .conftest import vend

pytestmark = pytest.mark.django_db

ROLES = ["factory_user", "security_user", "auditor_user", "outsider_user"]


def url(name: str, *args: object) -> str:
    return reverse(f"admin:provisioning_{name}", args=args)


@pytest.fixture
def active_device(api, aws_mock, make_device):
    device = make_device("SN-ACTIVE")
    assert vend(api, device.serial, device.token).status_code == 201
    return Device.objects.get(serial="SN-ACTIVE")


def status_of(client, method: str, target: str, data: dict | None = None) -> int:
    response = client.get(target) if method == "get" else client.post(target, data or {})
    return response.status_code


# (role -> expected status) for each page; 302 on POST means the change went through.
PAGES = [
    (
        "get",
        "device_changelist",
        {"factory_user": 200, "security_user": 200, "auditor_user": 200, "outsider_user": 403},
    ),
    ("get", "device_add", {"factory_user": 200, "security_user": 200, "auditor_user": 403, "outsider_user": 403}),
    ("get", "device_import", {"factory_user": 200, "security_user": 200, "auditor_user": 403, "outsider_user": 403}),
    (
        "get",
        "certificate_changelist",
        {"factory_user": 403, "security_user": 200, "auditor_user": 200, "outsider_user": 403},
    ),
    (
        "get",
        "auditevent_changelist",
        {"factory_user": 403, "security_user": 200, "auditor_user": 200, "outsider_user": 403},
    ),
    (
        "get",
        "dynamooutbox_changelist",
        {"factory_user": 403, "security_user": 200, "auditor_user": 200, "outsider_user": 403},
    ),
    ("get", "device_export", {"factory_user": 403, "security_user": 200, "auditor_user": 200, "outsider_user": 403}),
    (
        "get",
        "certificate_export",
        {"factory_user": 403, "security_user": 200, "auditor_user": 200, "outsider_user": 403},
    ),
    (
        "get",
        "auditevent_export",
        {"factory_user": 403, "security_user": 200, "auditor_user": 200, "outsider_user": 403},
    ),
    ("get", "auditevent_add", {"factory_user": 403, "security_user": 403, "auditor_user": 403, "outsider_user": 403}),
    ("get", "certificate_add", {"factory_user": 403, "security_user": 403, "auditor_user": 403, "outsider_user": 403}),
]


@pytest.mark.parametrize(("method", "name", "expected"), PAGES, ids=[p[1] for p in PAGES])
@pytest.mark.parametrize("role", ROLES)
def test_pages_per_role(request, as_user, role, method, name, expected):
    client = as_user(request.getfixturevalue(role))
    assert status_of(client, method, url(name)) == expected[role]


@pytest.mark.parametrize("role", ROLES)
def test_device_pages_per_role(request, as_user, active_device, role):
    client = as_user(request.getfixturevalue(role))
    can_view = role != "outsider_user"
    can_revoke = role == "security_user"

    assert client.get(url("device_change", active_device.pk)).status_code == (200 if can_view else 403)
    assert client.get(url("device_revoke", active_device.pk)).status_code == (200 if can_revoke else 403)
    assert client.get(url("device_reset", active_device.pk)).status_code == (200 if can_revoke else 403)
    assert client.get(url("device_delete", active_device.pk)).status_code == 403
    # No field of a device is ever edited in place.
    assert client.post(url("device_change", active_device.pk), {"serial": "X"}).status_code == 403
    assert Device.objects.get(pk=active_device.pk).state == DeviceState.ACTIVE


@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        ("issue_tokens_action", {"factory_user", "security_user"}),
        ("revoke_action", {"security_user"}),
        ("reset_action", {"security_user"}),
    ],
)
@pytest.mark.parametrize("role", ROLES)
def test_actions_per_role(request, as_user, make_device, role, action, allowed):
    device = make_device("SN-ACTION", with_token=False)
    client = as_user(request.getfixturevalue(role))

    response = client.post(url("device_changelist"), {"action": action, ACTION_CHECKBOX_NAME: [device.device.pk]})

    if role in allowed:
        assert response.status_code == 200  # the confirmation page
        assert b'id="confirm-summary"' in response.content
        # A registered device can get a token; it has nothing to revoke or reset, so no button for those.
        assert (b"confirm-action" in response.content) == (action == "issue_tokens_action")
    else:
        assert response.status_code == 403
    assert Device.objects.get(serial="SN-ACTION").state == DeviceState.REGISTERED


def test_superuser_cannot_change_or_delete_history(as_user, superuser, active_device):
    client = as_user(superuser)
    certificate = Certificate.objects.get()
    event = AuditEvent.objects.first()

    assert client.get(url("auditevent_add")).status_code == 403
    assert client.post(url("auditevent_change", event.pk), {"actor": "x"}).status_code == 403
    assert client.post(url("auditevent_delete", event.pk), {"post": "yes"}).status_code == 403
    assert client.post(url("certificate_change", certificate.pk), {"status": "revoked"}).status_code == 403
    assert client.post(url("certificate_delete", certificate.pk), {"post": "yes"}).status_code == 403
    assert client.post(url("device_delete", active_device.pk), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_auditor_pages_show_no_button_that_changes_anything(as_user, auditor_user, active_device):
    client = as_user(auditor_user)
    for target in (
        url("device_changelist"),
        url("device_change", active_device.pk),
        url("certificate_changelist"),
        url("auditevent_changelist"),
    ):
        html = client.get(target).content.decode()
        for marker in ('name="_save"', 'name="action"', "deletelink", "addlink", "revoke-device", "reset-device"):
            assert marker not in html, f"{marker} on {target}"
        if "changelist" in target:
            assert "export-csv" in html


def test_outsider_sees_nothing_on_the_index(as_user, outsider_user):
    html = as_user(outsider_user).get(reverse("admin:index")).content.decode()
    assert "Provisioning" not in html
    assert 'id="dashboard"' not in html
    assert "have permission to view or edit anything" in html


def test_login_and_failed_login_are_audited(client, factory_user):
    login = reverse("admin:login")
    client.post(login, {"username": "fiona", "password": "wrong"})
    client.post(login, {"username": "fiona", "password": "a-long-test-password-1"})

    kinds = list(AuditEvent.objects.order_by("id").values_list("kind", "actor"))
    assert kinds == [(AuditKind.ADMIN_LOGIN_FAILED, "fiona"), (AuditKind.ADMIN_LOGIN, "fiona")]
    assert "wrong" not in str(AuditEvent.objects.values_list("data", flat=True))


def test_unfiltered_lists_are_never_counted_in_full(as_user, auditor_user, make_device):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for i in range(3):
        make_device(f"SN-BIG{i}")
    client = as_user(auditor_user)
    for target in ("device_changelist", "certificate_changelist", "auditevent_changelist"):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url(target)).status_code == 200
        counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
        assert not counts, f"{target} counted a table: {counts}"
    # A filtered list is counted exactly, on its index.
    html = client.get(url("device_changelist") + "?state__exact=token_issued").content.decode()
    assert "3 devices" in html
