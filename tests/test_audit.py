"""The audit log is append-only and `verify_audit` finds any edited, inserted or deleted row."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from provisioning.audit import audit_append, audit_verify
from provisioning.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def five_events() -> list[AuditEvent]:
    for i in range(5):
        with transaction.atomic():
            audit_append(kind="token_issued", actor="alice", serial=f"SN-{i}", data={"n": i})
    return list(AuditEvent.objects.order_by("seq"))


def sql(statement: str, *params: object) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_clean_log_verifies(five_events, capsys):
    call_command("verify_audit")
    assert capsys.readouterr().out.startswith("audit log intact: 5 event(s), head ")


def test_edited_row_is_detected(five_events):
    sql("UPDATE provisioning_auditevent SET actor = %s WHERE seq = 3", "mallory")

    with pytest.raises(CommandError, match="#3: content does not match its hash"):
        call_command("verify_audit")


def test_deleted_row_is_detected(five_events):
    sql("DELETE FROM provisioning_auditevent WHERE seq = 2")

    with pytest.raises(CommandError, match="#3: expected #2 here"):
        call_command("verify_audit")


def test_deleted_newest_row_is_detected(five_events):
    sql("DELETE FROM provisioning_auditevent WHERE seq = 5")

    problems = audit_verify()
    assert [str(p) for p in problems] == ["audit event #5: the newest events are missing: rows deleted at the end"]


def test_inserted_row_is_detected(five_events):
    # A forged row squeezed in with a plausible hash of its own, and later rows renumbered.
    sql("UPDATE provisioning_auditevent SET seq = seq + 100 WHERE seq >= 3")
    sql("UPDATE provisioning_auditevent SET seq = seq - 99 WHERE seq >= 103")
    third = five_events[2]
    sql(
        "INSERT INTO provisioning_auditevent"
        " (seq, created_at, kind, actor, serial, client_address, data, prev_hash, hash)"
        " VALUES (3, %s, 'device_revoked', 'mallory', 'SN-9', NULL, %s, %s, %s)",
        third.created_at,
        "{}",
        five_events[1].hash,
        "f" * 64,
    )

    with pytest.raises(CommandError, match="audit log broken"):
        call_command("verify_audit")
    assert any("#3" in str(p) for p in audit_verify())


def test_the_orm_refuses_to_change_or_delete_events(five_events):
    event = AuditEvent.objects.get(seq=1)
    event.actor = "mallory"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(seq=1).update(actor="mallory")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    assert audit_verify() == []


def test_appending_outside_a_transaction_is_refused(db):
    with pytest.raises(RuntimeError):
        audit_append(kind="token_issued", actor="alice")


def test_concurrent_appenders_never_fork_the_chain(transactional_db):
    import threading

    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        from django.db import connection as thread_connection

        barrier.wait()
        try:
            for n in range(10):
                with transaction.atomic():
                    audit_append(kind="token_issued", actor=f"writer-{i}", data={"n": n})
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert AuditEvent.objects.count() == 80
    assert sorted(AuditEvent.objects.values_list("seq", flat=True)) == list(range(1, 81))
    assert audit_verify() == []


@pytest.mark.parametrize("failing", ["audit", "outbox"])
def test_a_change_and_its_audit_event_commit_together_or_not_at_all(make_device, monkeypatch, failing):
    from provisioning import services
    from provisioning.models import Device, DeviceState, DynamoOutbox
    from provisioning.services import common

    device = make_device("SN-ATOMIC", with_token=False)
    events_before = AuditEvent.objects.count()
    outbox_before = DynamoOutbox.objects.count()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    if failing == "audit":
        monkeypatch.setattr(common, "audit_append_many", broken)
    else:
        monkeypatch.setattr(common, "outbox_insert", broken)

    with pytest.raises(RuntimeError):
        services.tokens_issue(serials=[device.serial], actor="test")

    assert Device.objects.get(serial="SN-ATOMIC").state == DeviceState.REGISTERED
    assert AuditEvent.objects.count() == events_before
    assert DynamoOutbox.objects.count() == outbox_before
