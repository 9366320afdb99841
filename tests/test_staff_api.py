"""The staff API (SPEC §9): keys and roles, every endpoint, pagination, bulk registration, a factory line."""

from __future__ import annotations

import base64
import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from provisioning.models import AuditEvent, AuditKind, Certificate, Device, DeviceState, StaffApiKey
from provisioning.services.apikeys import api_key_create, api_key_revoke

from .conftest import vend

pytestmark = pytest.mark.django_db

ROLES = ["factory", "security", "auditor"]


def client_with(key: str | None) -> APIClient:
    client = APIClient()
    if key is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


@pytest.fixture
def keys(db) -> dict[str, str]:
    return {role: api_key_create(name=f"{role}-tool", role=role, actor="test").key for role in ROLES}


@pytest.fixture
def as_role(keys):
    return lambda role: client_with(keys[role])


@pytest.fixture
def active_device(api, aws_mock, make_device):
    device = make_device("SN-ACTIVE")
    assert vend(api, device.serial, device.token).status_code == 201
    return device


def call(client: APIClient, method: str, path: str, body: dict | None = None):
    if method == "get":
        return client.get(path)
    return client.post(path, body or {}, format="json")


# (method, path, body, roles allowed, status when allowed). The device SN-ACTIVE is active (vended) and
# SN-NEW registered; each allowed call must succeed, each other role gets 403, no or a wrong key 401.
ENDPOINTS = [
    ("get", "/api/v1/devices", None, {"factory", "security", "auditor"}, 200),
    ("get", "/api/v1/devices/SN-ACTIVE", None, {"factory", "security", "auditor"}, 200),
    ("post", "/api/v1/devices", {"devices": [{"serial": "SN-API-1"}]}, {"factory", "security"}, 201),
    ("post", "/api/v1/tokens", {"serials": ["SN-NEW"]}, {"factory", "security"}, 201),
    ("post", "/api/v1/devices/SN-ACTIVE/revoke", {"reason": "stolen"}, {"security"}, 200),
    ("post", "/api/v1/devices/SN-ACTIVE/reset", {"reason": "returned"}, {"security"}, 200),
    ("get", "/api/v1/audit-events", None, {"security", "auditor"}, 200),
]
IDS = [f"{m}-{p}" for m, p, *_ in ENDPOINTS]


@pytest.mark.parametrize(("method", "path", "body", "allowed", "success"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("role", ROLES)
def test_every_endpoint_with_every_role(
    as_role, active_device, make_device, role, method, path, body, allowed, success
):
    make_device("SN-NEW", with_token=False)

    response = call(as_role(role), method, path, body)

    if role in allowed:
        assert response.status_code == success, response.content
    else:
        assert response.status_code == 403
        assert response.json() == {"detail": "this API key's role may not do this"}
        assert Device.objects.get(serial="SN-ACTIVE").state == DeviceState.ACTIVE
        assert not Device.objects.filter(serial="SN-API-1").exists()
        assert Device.objects.get(serial="SN-NEW").state == DeviceState.REGISTERED


@pytest.mark.parametrize(("method", "path", "body", "allowed", "success"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Api-Key wrong.key", "Api-Key ", "Bearer abc", "Api-Key " + "x" * 500, "Api-Key revoked"],
    ids=["none", "wrong", "empty", "other-scheme", "huge", "revoked"],
)
def test_every_endpoint_refuses_a_missing_or_wrong_key(
    db, keys, make_device, method, path, body, allowed, success, authorization
):
    make_device("SN-ACTIVE", with_token=False)
    client = APIClient()
    if authorization == "Api-Key revoked":
        revoked = api_key_create(name="old-line", role="security", actor="test")
        api_key_revoke(key_id=revoked.api_key.pk, actor="test")
        authorization = f"Api-Key {revoked.key}"
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    response = call(client, method, path, body)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"
    assert set(response.json()) == {"detail"}
    assert not Device.objects.filter(serial="SN-API-1").exists()


def test_a_key_has_exactly_its_groups_permissions(as_role, make_device):
    """One source of truth with the admin: a permission taken from the group is gone from the key at once."""
    from django.contrib.auth.models import Group, Permission

    make_device("SN-1", with_token=False)
    factory = Group.objects.get(name="factory")
    factory.permissions.remove(Permission.objects.get(codename="issue_token"))

    assert as_role("factory").post("/api/v1/tokens", {"serials": ["SN-1"]}, format="json").status_code == 403

    factory.permissions.add(Permission.objects.get(codename="issue_token"))
    assert as_role("factory").post("/api/v1/tokens", {"serials": ["SN-1"]}, format="json").status_code == 201


def test_a_factory_line_registers_fetches_tokens_and_the_device_vends(as_role, api, aws_mock):
    line = as_role("factory")

    registered = line.post(
        "/api/v1/devices",
        {
            "devices": [
                {"serial": "SN-L3-1", "product": "thermostat", "attributes": {"line": "L3"}},
                {"serial": "SN-L3-2"},
            ]
        },
        format="json",
    )
    assert registered.status_code == 201
    assert registered.json() == {"created": 2, "existing": 0}

    issued = line.post("/api/v1/tokens", {"serials": ["SN-L3-1", "SN-L3-2"], "ttl_days": 7}, format="json")
    assert issued.status_code == 201
    assert "no-store" in issued["Cache-Control"]
    tokens = {t["serial"]: t["token"] for t in issued.json()["tokens"]}
    assert set(tokens) == {"SN-L3-1", "SN-L3-2"}

    # The flashing station writes the token; on first boot the device vends its certificate.
    assert vend(api, "SN-L3-1", tokens["SN-L3-1"]).status_code == 201

    device = line.get("/api/v1/devices/SN-L3-1").json()
    assert device["state"] == "active"
    assert device["product"] == "thermostat"
    assert device["attributes"] == {"line": "L3"}
    assert device["certificate_id"]
    assert "certificates" not in device  # as in the admin, the factory role does not see the history
    assert aws_mock.thing("SN-L3-1")["attributes"] == {"line": "L3", "serial": "SN-L3-1", "product": "thermostat"}
    actors = set(
        AuditEvent.objects.filter(kind__in=["device_registered", "token_issued"]).values_list("actor", flat=True)
    )
    assert actors == {"api-key:factory-tool"}
    # Registering the same serials again is not an error.
    again = line.post("/api/v1/devices", {"devices": [{"serial": "SN-L3-1"}, {"serial": "SN-L3-3"}]}, format="json")
    assert again.json() == {"created": 1, "existing": 1}


def test_security_revokes_and_resets_and_both_are_audited_with_the_key(as_role, aws_mock, active_device):
    security = as_role("security")

    revoked = security.post("/api/v1/devices/SN-ACTIVE/revoke", {"reason": "stolen"}, format="json")

    assert revoked.status_code == 200
    body = revoked.json()
    assert body["state"] == "revoked"
    assert [c["status"] for c in body["certificates"]] == ["revoked"]
    assert body["certificates"][0]["revoked_reason"] == "stolen"
    assert body["certificates"][0]["revoked_by"] == "api-key:security-tool"
    assert [c["status"] for c in aws_mock.thing_certificates("SN-ACTIVE")] == []
    certificate = Certificate.objects.get(device__serial="SN-ACTIVE")
    assert (
        aws_mock.iot.describe_certificate(certificateId=certificate.certificate_id)["certificateDescription"]["status"]
        == "REVOKED"
    )
    again = security.post("/api/v1/devices/SN-ACTIVE/revoke", {"reason": "stolen"}, format="json")
    assert again.status_code == 409
    assert "only an active device can be revoked" in again.json()["detail"]

    reset = security.post("/api/v1/devices/SN-ACTIVE/reset", {"ttl_days": 3}, format="json")

    assert reset.status_code == 200
    assert set(reset.json()) == {"serial", "token", "expires_at"}
    assert "no-store" in reset["Cache-Control"]
    assert Device.objects.get(serial="SN-ACTIVE").state == DeviceState.TOKEN_ISSUED
    kinds = list(
        AuditEvent.objects.filter(serial="SN-ACTIVE", actor="api-key:security-tool").values_list("kind", flat=True)
    )
    assert sorted(kinds) == sorted([AuditKind.DEVICE_REVOKED, AuditKind.DEVICE_RESET])


def test_unknown_serials_are_404_on_paths_and_named_by_index_in_token_lists(as_role, make_device):
    make_device("SN-1", with_token=False)
    security = as_role("security")

    assert security.get("/api/v1/devices/SN-NOPE").status_code == 404
    assert security.post("/api/v1/devices/SN-NOPE/revoke", {"reason": "x"}, format="json").status_code == 404
    assert security.post("/api/v1/devices/SN-NOPE/reset", {}, format="json").status_code == 404
    response = security.post("/api/v1/tokens", {"serials": ["SN-1", "SN-NOPE"]}, format="json")
    assert response.status_code == 400
    assert response.json() == {"serials": {"1": ["unknown serial"]}}
    assert Device.objects.get(serial="SN-1").state == DeviceState.REGISTERED


def test_tokens_follow_the_rules_of_issue_tokens(as_role, active_device, make_device):
    make_device("SN-1", with_token=False)

    response = as_role("factory").post("/api/v1/tokens", {"serials": ["SN-1", "SN-ACTIVE"]}, format="json")

    assert response.status_code == 409
    assert response.json() == {"detail": "device SN-ACTIVE is active; use reset to give it a new token"}
    assert Device.objects.get(serial="SN-1").state == DeviceState.REGISTERED  # all or none


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/tokens", {"serials": "SN-1"}, "serials"),
        ("/api/v1/tokens", {"serials": []}, "serials"),
        ("/api/v1/tokens", {"serials": [1]}, "serials"),
        ("/api/v1/tokens", {"serials": ["SN-1", "SN-1"]}, "serials"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "ttl_days": "30"}, "ttl_days"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "ttl_days": 30.0}, "ttl_days"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "ttl_days": True}, "ttl_days"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "ttl_days": None}, "ttl_days"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "ttl_days": 0}, "ttl_days"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "ttl_days": 3651}, "ttl_days"),
        ("/api/v1/tokens", {"serials": ["SN-1"], "extra": 1}, "extra"),
        ("/api/v1/devices", {"devices": {"serial": "SN-2"}}, "devices"),
        ("/api/v1/devices", {"devices": []}, "devices"),
        ("/api/v1/devices", {}, "devices"),
        ("/api/v1/devices/SN-1/revoke", {"reason": 5}, "reason"),
        ("/api/v1/devices/SN-1/revoke", {"reason": "  "}, "reason"),
        ("/api/v1/devices/SN-1/revoke", {}, "reason"),
        ("/api/v1/devices/SN-1/reset", {"reason": ["x"]}, "reason"),
        ("/api/v1/devices/SN-1/reset", {"ttl_days": "7"}, "ttl_days"),
        ("/api/v1/devices/SN-1/reset", {"ttl_days": False}, "ttl_days"),
    ],
)
def test_every_json_field_of_the_wrong_type_is_a_400_naming_it(as_role, make_device, path, body, field):
    make_device("SN-1", with_token=False)

    response = as_role("security").post(path, body, format="json")

    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Device.objects.get(serial="SN-1").state == DeviceState.REGISTERED
    assert not Device.objects.filter(serial="SN-2").exists()


def test_bulk_registration_is_all_or_none_and_names_each_bad_entry(as_role):
    devices = [{"serial": f"SN-{i:04d}", "product": "meter"} for i in range(50)]
    devices[3] = {"serial": 3}
    devices[7] = {"serial": "bad serial"}
    devices[11] = {"serial": "SN-0000"}
    devices[12] = {"serial": "SN-0012", "product": "no spaces allowed"}
    devices[13] = {"serial": "SN-0013", "attributes": {"a": "1", "b": "2"}}
    devices[14] = {"serial": "SN-0014", "attributes": {"serial": "x"}}
    devices[15] = {"serial": "SN-0015", "attributes": {"line": 3}}
    devices[16] = {"serial": "SN-0016", "colour": "red"}
    devices[17] = "SN-0017"
    devices[18] = {"product": "meter"}
    devices[19] = {"serial": "SN-0019", "attributes": ["line"]}

    response = as_role("factory").post("/api/v1/devices", {"devices": devices}, format="json")

    assert response.status_code == 400
    errors = response.json()["devices"]
    assert sorted(errors, key=int) == ["3", "7", "11", "12", "13", "14", "15", "16", "17", "18", "19"]
    assert errors["3"] == {"serial": ["must be a JSON string"]}
    assert errors["11"] == {"serial": ["serial SN-0000 repeats entry 0"]}
    assert errors["16"] == {"colour": ["unknown field"]}
    assert set(errors["12"]) == {"product"}
    assert set(errors["13"]) == {"attributes"}
    assert set(errors["18"]) == {"serial"}
    assert Device.objects.count() == 0
    assert not AuditEvent.objects.filter(kind=AuditKind.DEVICE_REGISTERED).exists()


def test_bulk_registration_takes_100000_devices_in_one_request(as_role, settings):
    devices = [{"serial": f"SN-{i:07d}", "product": "meter"} for i in range(100_000)]
    body = json.dumps({"devices": devices})
    assert len(body) > settings.CVM_MAX_BODY_BYTES  # the bulk calls have their own, larger limit

    started = time.monotonic()
    response = as_role("factory").post("/api/v1/devices", body, content_type="application/json")
    elapsed = time.monotonic() - started

    assert response.status_code == 201, response.content[:300]
    assert response.json() == {"created": 100_000, "existing": 0}
    assert Device.objects.count() == 100_000
    assert elapsed < 120
    too_many = json.dumps({"devices": [*devices, {"serial": "SN-X"}]})
    response = as_role("factory").post("/api/v1/devices", too_many, content_type="application/json")
    assert response.status_code == 400
    assert "at most 100000 entries" in response.json()["devices"][0]


def test_body_limits_bulk_calls_larger_every_other_path_64_kib(as_role, api, settings):
    settings.CVM_API_BULK_MAX_BODY_BYTES = 200_000
    big = json.dumps({"devices": [{"serial": f"SN-{i:06d}"} for i in range(12_000)]})
    assert len(big) > 200_000

    assert as_role("factory").post("/api/v1/devices", big, content_type="application/json").status_code == 413
    padded = json.dumps({"serial": "SN-1", "token": "x" * 70_000})
    assert api.post("/api/v1/certificates", padded, content_type="application/json").status_code == 413
    reason = json.dumps({"reason": "x" * 70_000})
    assert (
        as_role("security").post("/api/v1/devices/SN-1/revoke", reason, content_type="application/json").status_code
        == 413
    )


def test_device_list_is_cursor_paginated_and_stable_under_inserts(as_role, make_device):
    for i in range(0, 50, 2):  # SN-000, SN-002, … SN-048
        make_device(f"SN-{i:03d}", with_token=i % 4 == 0)
    client = as_role("auditor")
    first = client.get("/api/v1/devices?page_size=10").json()
    seen = [d["serial"] for d in first["results"]]
    assert seen == [f"SN-{i:03d}" for i in range(0, 20, 2)]

    # Devices registered while the caller pages: before the cursor, between pages, after everything.
    for serial in ("SN-001", "SN-011", "SN-019", "SN-099"):
        make_device(serial, with_token=False)
    next_url = first["next"]
    while next_url:
        page = client.get(next_url).json()
        seen.extend(d["serial"] for d in page["results"])
        next_url = page["next"]

    assert len(seen) == len(set(seen)), "no device twice"
    original = {f"SN-{i:03d}" for i in range(0, 50, 2)}
    assert original <= set(seen), "no device skipped"
    assert {"SN-019", "SN-099"} <= set(seen)  # those after the cursor show up
    assert not {"SN-001", "SN-011"} & set(seen)  # those behind it wait for the next walk


def test_device_list_filters_and_refuses_what_it_does_not_know(as_role, make_device):
    make_device("SN-A", product="meter")
    make_device("SN-B", product="sensor", with_token=False)
    client = as_role("factory")

    assert [d["serial"] for d in client.get("/api/v1/devices?state=token_issued").json()["results"]] == ["SN-A"]
    assert [d["serial"] for d in client.get("/api/v1/devices?product=sensor").json()["results"]] == ["SN-B"]
    blank = client.get("/api/v1/devices?state=&product=sensor&cursor=").json()["results"]
    assert [d["serial"] for d in blank] == ["SN-B"], "an empty value is no filter"
    for query, field in [
        ("state=lost", "state"),
        ("colour=red", "colour"),
        ("state=active&state=revoked", "state"),
        ("cursor=garbage", "cursor"),
        ("page_size=0", "page_size"),
        ("page_size=1001", "page_size"),
        ("serial__regex=.*", "serial__regex"),
    ]:
        response = client.get(f"/api/v1/devices?{query}")
        assert response.status_code == 400, query
        assert field in response.json(), query


def test_audit_events_oldest_first_filtered_and_paginated(as_role, active_device, make_device):
    from provisioning.audit import audit_chain_pending

    make_device("SN-OTHER")
    client = as_role("auditor")
    # Listed once chained: a follower's cursor (seq) then never passes an event that commits later.
    assert client.get("/api/v1/audit-events?serial=SN-ACTIVE").json()["results"] == []
    audit_chain_pending()

    events = []
    url = "/api/v1/audit-events?serial=SN-ACTIVE&page_size=2"
    while url:
        page = client.get(url).json()
        events.extend(page["results"])
        url = page["next"]

    assert [e["kind"] for e in events] == ["device_registered", "token_issued", "vend_claimed", "certificate_issued"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert set(events[0]) == {"seq", "created_at", "kind", "actor", "serial", "client_address", "data"}
    issued = client.get("/api/v1/audit-events?kind=certificate_issued").json()["results"]
    assert [e["serial"] for e in issued] == ["SN-ACTIVE"]
    since = events[-1]["created_at"]
    later = client.get("/api/v1/audit-events", {"since": since}).json()["results"]
    assert later
    assert all(e["created_at"] >= since for e in later)
    assert client.get("/api/v1/audit-events?since=yesterday").status_code == 400
    assert client.get("/api/v1/audit-events?kind=nope").status_code == 400
    # A cursor that decodes but names no position an event can have is refused, not read as "from the start".
    for forged in ("p=-5", "p=x", "p=1.5", "p="):
        cursor = base64.b64encode(forged.encode()).decode()
        response = client.get("/api/v1/audit-events", {"cursor": cursor})
        assert response.status_code == 400, forged
        assert response.json() == {"cursor": ["invalid cursor: use the next URL of the previous page"]}
    genuine = base64.b64encode(f"p={events[1]['seq']}".encode()).decode()
    after = client.get("/api/v1/audit-events", {"cursor": genuine, "serial": "SN-ACTIVE"}).json()["results"]
    assert [e["seq"] for e in after] == [e["seq"] for e in events[2:]]


def test_each_key_has_its_own_rate_limit(as_role, settings, make_device):
    settings.CVM_API_KEY_REQUESTS_PER_MINUTE = 3
    factory = as_role("factory")

    statuses = [factory.get("/api/v1/devices").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    limited = factory.get("/api/v1/devices")
    assert int(limited["Retry-After"]) >= 1
    assert as_role("auditor").get("/api/v1/devices").status_code == 200


def test_methods_a_call_does_not_have_are_405(as_role):
    client = as_role("security")
    assert client.delete("/api/v1/devices").status_code == 405
    assert client.put("/api/v1/tokens", {}, format="json").status_code == 405
    assert client.options("/api/v1/devices").status_code == 405
    assert client.get("/api/v1/tokens").status_code == 405


def test_create_api_key_prints_the_key_once_on_the_last_line(db):
    out = StringIO()
    call_command("create_api_key", "line-7", "--role", "factory", stdout=out)

    key = out.getvalue().strip().splitlines()[-1]
    stored = StaffApiKey.objects.get(name="line-7")
    assert stored.role == "factory"
    assert key.startswith(stored.prefix + ".")
    assert key not in stored.hashed_key
    assert key not in stored.pk
    assert client_with(key).get("/api/v1/devices").status_code == 200
    created = AuditEvent.objects.get(kind=AuditKind.API_KEY_CREATED)
    assert created.data == {"name": "line-7", "role": "factory", "prefix": stored.prefix}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["line-7", "--role", "admin"], "invalid choice"),
        (["line 7", "--role", "factory"], "a key name is 1-50"),
        (["line-7"], "--role"),
    ],
)
def test_create_api_key_refuses_bad_input(db, argv, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *argv, stdout=StringIO())
    assert not StaffApiKey.objects.exists()


def test_two_usable_keys_never_share_a_name(db):
    first = api_key_create(name="siem", role="auditor", actor="test")
    with pytest.raises(CommandError, match="exists already"):
        call_command("create_api_key", "siem", "--role", "auditor", stdout=StringIO())
    api_key_revoke(key_id=first.api_key.pk, actor="test")
    call_command("create_api_key", "siem", "--role", "auditor", stdout=StringIO())
    assert StaffApiKey.objects.filter(name="siem").count() == 2


def test_the_schema_documents_the_staff_api_and_its_security_scheme(api):
    schema = api.get("/api/schema?format=json").json()

    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path in ("/api/v1/devices", "/api/v1/tokens", "/api/v1/audit-events", "/api/v1/devices/{serial}/revoke"):
        for operation in schema["paths"][path].values():
            assert operation["security"] == [{"ApiKey": []}], path
            assert {"401", "403", "429"} <= set(operation["responses"]), path
    tokens = schema["paths"]["/api/v1/tokens"]["post"]
    assert "Cache-Control" in tokens["responses"]["201"]["headers"]
    assert "examples" in tokens["responses"]["201"]["content"]["application/json"]
    # Devices need no key: the device calls name no scheme.
    assert schema["paths"]["/api/v1/certificates"]["post"].get("security", [{}]) == [{}]


def test_keys_are_listed_and_revoked_in_the_admin(as_user, security_user, auditor_user, keys):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.urls import reverse

    listing = reverse("admin:provisioning_staffapikey_changelist")
    auditor = as_user(auditor_user)
    assert auditor.get(listing).status_code == 200
    factory_key = StaffApiKey.objects.get(name="factory-tool")
    auditor.post(listing, {"action": "revoke_action", ACTION_CHECKBOX_NAME: [factory_key.pk]})
    assert not StaffApiKey.objects.get(pk=factory_key.pk).revoked

    security = as_user(security_user)
    page = security.get(listing)
    assert b"factory-tool" in page.content
    assert keys["factory"] not in page.content.decode()
    security.post(listing, {"action": "revoke_action", ACTION_CHECKBOX_NAME: [factory_key.pk]})

    revoked = StaffApiKey.objects.get(pk=factory_key.pk)
    assert revoked.revoked
    assert revoked.revoked_by == "staff:sam"
    assert client_with(keys["factory"]).get("/api/v1/devices").status_code == 401
    assert AuditEvent.objects.filter(kind=AuditKind.API_KEY_REVOKED, actor="staff:sam").count() == 1
