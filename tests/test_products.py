"""Products shape their things like a fleet-provisioning template (SPEC §5.1): policy, thing type, thing
groups, attributes from the factory, rotation age; drift found and repaired by reconcile."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils.timezone import now as timezone_now

from provisioning.models import AuditEvent, AuditKind, Device, DeviceState, Product
from provisioning.reconcile import reconcile_find, reconcile_fix
from provisioning.services import tokens_issue

from .conftest import make_csr, vend

DEVNULL = open("/dev/null", "w")  # noqa: SIM115 - command output the tests do not read


def configure(*args: str) -> None:
    call_command("configure_product", *args, stdout=DEVNULL)


def import_csv(tmp_path, text: str, *args: str) -> None:
    source = tmp_path / "serials.csv"
    source.write_text(text)
    call_command("import_serials", str(source), *args, stdout=DEVNULL)


def issue(api, serial: str) -> dict:
    token = tokens_issue(serials=[serial], actor="test")[0].token
    response = vend(api, serial, token, csr=make_csr(serial)[0])
    assert response.status_code == 201, response.json()
    return response.json()


def test_a_product_with_type_groups_and_policy_produces_exactly_that(api, aws_mock, db, tmp_path):
    configure(
        "thermostat", "--iot-policy", "thermostat-policy", "--thing-type", "thermostat-v2",
        "--thing-group", "eu", "--thing-group", "beta", "ota-wave-1",
    )  # fmt: skip
    import_csv(tmp_path, "serial,product,color,firmware\nSN-1,thermostat,red,1.2.3\n")

    body = issue(api, "SN-1")

    iot = aws_mock.iot
    thing = iot.describe_thing(thingName="SN-1")
    assert thing["thingTypeName"] == "thermostat-v2"
    assert thing["attributes"] == {"serial": "SN-1", "product": "thermostat", "color": "red", "firmware": "1.2.3"}
    groups = {g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="SN-1")["thingGroups"]}
    assert groups == {"eu", "beta", "ota-wave-1"}
    assert aws_mock.policies_of(body["certificate_arn"]) == ["thermostat-policy"]
    assert iot.get_policy(policyName="thermostat-policy")["policyName"] == "thermostat-policy"


def test_a_plain_product_keeps_the_default_policy(api, aws_mock, make_device):
    device = make_device("SN-2", product="plain")
    body = vend(api, device.serial, device.token).json()
    assert aws_mock.policies_of(body["certificate_arn"]) == ["cvm-device-policy"]
    assert "thingTypeName" not in aws_mock.iot.describe_thing(thingName="SN-2")


def test_configure_product_is_idempotent_and_audited(aws_mock, db, capsys):
    configure("meter", "--thing-type", "meter-type", "--thing-group", "g1", "g2", "--rotate-after-days", "365")
    configure("meter", "--thing-type", "meter-type", "--thing-group", "g1", "g2", "--rotate-after-days", "365")

    product = Product.objects.get(name="meter")
    assert (product.thing_type, product.thing_groups, product.rotate_after_days) == ("meter-type", ["g1", "g2"], 365)
    events = AuditEvent.objects.filter(kind=AuditKind.PRODUCT_CONFIGURED)
    assert events.count() == 1, "the second run changed nothing"
    assert events.get().data["changes"]["thing_groups"] == ["g1", "g2"]
    configure("meter", "--no-thing-groups")
    assert Product.objects.get(name="meter").thing_groups == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Name"], "product name must be"),
        (["p", "--thing-type", "has space"], "thing type"),
        (["p", "--thing-group", "ok", "not/ok"], "thing group"),
        (["p", "--iot-policy", "pol icy"], "policy"),
        (["p", "--rotate-after-days", "0"], "1 to 3650"),
        (["p", "--thing-group", "a", "--no-thing-groups"], "not both"),
    ],
)
def test_configure_product_refuses_names_aws_would_refuse_before_anything_changes(aws_mock, db, args, message):
    with pytest.raises(CommandError, match=message):
        configure(*args)
    assert not Product.objects.exists()
    assert not aws_mock.iot.list_thing_types()["thingTypes"]


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("serial,bad name\nSN-1,x\n", "line 1: column 2: attribute name"),
        ("serial,color\nSN-1,x\nSN-2,not ok\n", "line 3: value of 'color'"),
        ("serial,color\nSN-1,x\nSN-2," + "a" * 801 + "\n", "line 3: value of 'color'"),
        ("serial,serial_no,batch\nSN-1,a,b\n", "line 2: 2 attributes, but a thing without a thing type may have 1"),
        ("serial,product,serial\nSN-1,p,x\n", "line 1"),
        ("serial,color,color\nSN-1,a,b\n", "appears twice"),
    ],
)
def test_a_bad_attribute_refuses_the_whole_import_with_its_line(tmp_path, db, capsys, csv, message):
    with pytest.raises(CommandError, match="invalid row"):
        import_csv(tmp_path, csv)
    assert message in capsys.readouterr().err
    assert not Device.objects.exists()


def test_a_thing_type_allows_up_to_48_attributes_of_the_devices_own(aws_mock, db, tmp_path, capsys):
    configure("typed", "--thing-type", "typed-type")
    names = [f"a{i}" for i in range(48)]
    import_csv(tmp_path, "serial,product," + ",".join(names) + "\nSN-1,typed," + ",".join("v" for _ in names) + "\n")
    assert len(Device.objects.get(serial="SN-1").attributes) == 48

    names.append("a48")
    with pytest.raises(CommandError, match="invalid row"):
        import_csv(
            tmp_path, "serial,product," + ",".join(names) + "\nSN-2,typed," + ",".join("v" for _ in names) + "\n"
        )
    assert "49 attributes, but a thing with a thing type may have 48" in capsys.readouterr().err


def test_an_aws_fault_while_joining_a_group_leaves_nothing_active_and_the_token_valid(
    api, aws_mock, aws_fault, make_device
):
    configure("grouped", "--thing-group", "fleet")
    device = make_device("SN-3", product="grouped")
    fault = aws_fault("AddThingToThingGroup")

    response = vend(api, device.serial, device.token)

    assert response.status_code == 503
    assert aws_mock.active_certificates() == []
    assert Device.objects.get(serial="SN-3").state == DeviceState.TOKEN_ISSUED
    fault.heal()
    assert vend(api, device.serial, device.token).status_code == 201


def test_the_answer_carries_rotate_after_when_the_product_asks(api, aws_mock, make_device):
    configure("rotating", "--rotate-after-days", "30")
    device = make_device("SN-4", product="rotating")

    body = vend(api, device.serial, device.token).json()

    rotate_after = datetime.fromisoformat(body["rotate_after"].replace("Z", "+00:00"))
    issued = Device.objects.get(serial="SN-4").current_certificate.issued_at
    assert abs(rotate_after - (issued + timedelta(days=30))) < timedelta(seconds=2)
    plain = make_device("SN-5")
    assert "rotate_after" not in vend(api, plain.serial, plain.token).json()


def test_drift_in_type_groups_attributes_and_policy_is_found_and_fixed(api, aws_mock, db, tmp_path):
    configure("shaped", "--thing-type", "shaped-type", "--thing-group", "g1", "g2")
    import_csv(tmp_path, "serial,product,color\nSN-6,shaped,red\n")
    body = issue(api, "SN-6")
    iot = aws_mock.iot
    # Someone edits the thing by hand, and the product changes its policy afterwards.
    iot.update_thing(thingName="SN-6", removeThingType=True, attributePayload={"attributes": {"color": "blue"}})
    iot.remove_thing_from_thing_group(thingGroupName="g2", thingName="SN-6")
    configure("shaped", "--iot-policy", "shaped-policy-v2")
    call_command("sync_dynamodb", "--once", stdout=DEVNULL)

    kinds = sorted(d.kind for d in reconcile_find() if d.serial == "SN-6")

    assert kinds == ["policy_differs", "thing_attributes_differ", "thing_groups_differ", "thing_type_differs"]
    results = reconcile_fix([d for d in reconcile_find() if d.serial == "SN-6"])
    assert all(r.error is None for r in results), results
    assert [d for d in reconcile_find() if d.serial == "SN-6"] == []
    thing = iot.describe_thing(thingName="SN-6")
    assert thing["thingTypeName"] == "shaped-type"
    assert thing["attributes"]["color"] == "red"
    assert aws_mock.policies_of(body["certificate_arn"]) == ["shaped-policy-v2"]


def test_bootstrap_aws_creates_what_products_name(aws_mock, db, capsys):
    Product.objects.create(name="late", thing_type="late-type", thing_groups=["late-group"], iot_policy="late-policy")

    call_command("bootstrap_aws")

    out = capsys.readouterr().out
    assert "product late: created policy late-policy" in out
    assert aws_mock.iot.describe_thing_type(thingTypeName="late-type")["thingTypeName"] == "late-type"
    assert aws_mock.iot.describe_thing_group(thingGroupName="late-group")["thingGroupName"] == "late-group"


def test_a_product_is_shaped_on_its_admin_page_and_the_change_audited(client, aws_mock, superuser):
    client.force_login(superuser)
    add = "/admin/provisioning/product/add/"
    response = client.post(
        add,
        {
            "name": "sensor-x",
            "description": "outdoor sensor",
            "iot_policy": "cvm-device-policy-sensor-x",
            "thing_type": "sensor-x-type",
            "thing_groups_text": "eu, beta",
            "rotate_after_days": "90",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]

    product = Product.objects.get(name="sensor-x")
    assert (product.thing_type, product.thing_groups, product.rotate_after_days) == (
        "sensor-x-type",
        ["eu", "beta"],
        90,
    )
    assert aws_mock.iot.describe_thing_type(thingTypeName="sensor-x-type")["thingTypeName"] == "sensor-x-type"
    assert AuditEvent.objects.get(kind=AuditKind.PRODUCT_CONFIGURED).actor == "staff:root"

    bad = client.post(
        f"/admin/provisioning/product/{product.pk}/change/",
        {
            "description": "",
            "iot_policy": "",
            "thing_type": "has space",
            "thing_groups_text": "",
            "rotate_after_days": "",
        },
    )
    assert bad.status_code == 200, "the form shows the error"
    assert Product.objects.get(name="sensor-x").thing_type == "sensor-x-type"


def test_the_rotation_due_list_follows_each_products_rotation_age(api, aws_mock, make_device, client, superuser):
    configure("monthly", "--rotate-after-days", "30")
    fresh, old = make_device("SN-FRESH", product="monthly"), make_device("SN-OLD", product="monthly")
    for device in (fresh, old):
        assert vend(api, device.serial, device.token).status_code == 201
    from provisioning.models import Certificate

    Certificate.objects.filter(device__serial="SN-OLD").update(issued_at=timezone_now() - timedelta(days=31))
    client.force_login(superuser)

    page = client.get("/admin/provisioning/device/?rotation=due").content.decode()

    assert "SN-OLD" in page
    assert "SN-FRESH" not in page
