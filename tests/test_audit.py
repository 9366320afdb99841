"""The audit log is append-only, chained by one sequencer, and `verify_audit` finds any edited, inserted or
deleted row and any event left unchained."""

from __future__ import annotations

import hashlib
import hmac
import json

import boto3
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from provisioning.audit import audit_append, audit_chain_pending, audit_verify
from provisioning.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def five_events() -> list[AuditEvent]:
    for i in range(5):
        with transaction.atomic():
            audit_append(kind="token_issued", actor="alice", serial=f"SN-{i}", data={"n": i})
    assert audit_chain_pending() == 5
    return list(AuditEvent.objects.order_by("seq"))


def sql(statement: str, *params: object) -> None:
    """Tamper as a database administrator would: on PostgreSQL, first switch the append-only triggers
    off for the session (a superuser or the table's owner can)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(statement, params)
        finally:
            if connection.vendor == "postgresql":
                cursor.execute("SET session_replication_role = DEFAULT")


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


def test_a_head_moved_back_or_edited_without_a_row_deleted_is_named_as_such(five_events):
    sql("UPDATE provisioning_auditchainhead SET last_seq = 3, last_hash = %s WHERE id = 1", five_events[2].hash)
    assert [str(p) for p in audit_verify()] == ["audit event #3: the chain head was moved back from #5: it was rewound"]

    sql("UPDATE provisioning_auditchainhead SET last_seq = 5, last_hash = %s WHERE id = 1", "0" * 64)
    assert [str(p) for p in audit_verify()] == [
        "audit event #5: the chain head's hash does not match that event: it was edited"
    ]


def test_inserted_row_is_detected(five_events):
    # A forged row squeezed in with a plausible hash of its own, and later rows renumbered.
    sql("UPDATE provisioning_auditevent SET seq = seq + 100 WHERE seq >= 3")
    sql("UPDATE provisioning_auditevent SET seq = seq - 99 WHERE seq >= 103")
    third = five_events[2]
    sql(
        "INSERT INTO provisioning_auditevent"
        " (seq, created_at, kind, actor, serial, client_address, data, prev_hash, hash, mac)"
        " VALUES (3, %s, 'device_revoked', 'mallory', 'SN-9', NULL, %s, %s, %s, '')",
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

    def sequencer() -> None:
        from django.db import connection as thread_connection

        try:
            while not done.is_set():
                audit_chain_pending(batch=7)  # small rounds, so the two sequencers interleave
        finally:
            thread_connection.close()

    done = threading.Event()
    # Two sequencers at once, as when a second worker is started by mistake: neither forks the chain.
    sequencers = [threading.Thread(target=sequencer) for _ in range(2)]
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in [*threads, *sequencers]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in sequencers:
        thread.join()
    audit_chain_pending()

    assert AuditEvent.objects.count() == 80
    assert sorted(AuditEvent.objects.values_list("seq", flat=True)) == list(range(1, 81))
    assert audit_verify() == []
    # Each writer's own events in the order it wrote them, whichever sequencer got there. (Across writers
    # the chain follows commit order, which on PostgreSQL need not be the order ids were handed out.)
    for i in range(8):
        mine = AuditEvent.objects.filter(actor=f"writer-{i}").order_by("seq").values_list("data__n", flat=True)
        assert list(mine) == list(range(10))


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


# --- an insider with write access to the database, but not the key --------------------------------


def _rechain(from_seq: int, digest) -> None:
    """Recompute every hash from `from_seq` on, and the head, the way an attacker without the key would."""
    from provisioning.audit import _body

    events = list(AuditEvent.objects.order_by("seq"))
    prev = events[from_seq - 2].hash if from_seq > 1 else "0" * 64
    for event in events[from_seq - 1 :]:
        event.prev_hash = prev
        body = _body(
            event.seq, event.created_at, event.kind, event.actor, event.serial, event.client_address, event.data, prev
        )
        prev = digest(body)
        sql(
            "UPDATE provisioning_auditevent SET prev_hash = %s, hash = %s WHERE seq = %s",
            event.prev_hash,
            prev,
            event.seq,
        )
    sql("UPDATE provisioning_auditchainhead SET last_hash = %s WHERE id = 1", prev)


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param(lambda body: hashlib.sha256(body).hexdigest(), id="plain-sha256"),
        pytest.param(lambda body: hmac.new(b"a guessed key", body, hashlib.sha256).hexdigest(), id="guessed-key"),
    ],
)
def test_an_edited_event_with_the_whole_chain_recomputed_is_detected(five_events, digest):
    sql("UPDATE provisioning_auditevent SET actor = %s WHERE seq = 3", "mallory")
    _rechain(3, digest)

    problems = [str(p) for p in audit_verify()]

    assert "audit event #3: content does not match its hash: the row was edited" in problems


def test_a_truncated_tail_with_the_head_rewound_is_caught_by_an_anchor(five_events, tmp_path, capsys):
    anchors = tmp_path / "anchors.jsonl"
    call_command("anchor_audit", "--to", str(anchors))
    sql("DELETE FROM provisioning_auditevent WHERE seq >= 4")
    sql("UPDATE provisioning_auditchainhead SET last_seq = 3, last_hash = %s WHERE id = 1", five_events[2].hash)

    assert audit_verify() == [], "without anchors the shortened chain is self-consistent"
    with pytest.raises(CommandError, match=r"#5: anchored at .* but missing: the log was truncated"):
        call_command("verify_audit", "--anchors", str(anchors))


def test_a_database_restored_from_an_older_copy_differs_from_its_anchor(five_events, tmp_path):
    anchors = tmp_path / "anchors.jsonl"
    call_command("anchor_audit", "--to", str(anchors))
    # The restored copy lacks events 4 and 5; the portal then writes two new, different ones.
    sql("DELETE FROM provisioning_auditevent WHERE seq >= 4")
    sql("UPDATE provisioning_auditchainhead SET last_seq = 3, last_hash = %s WHERE id = 1", five_events[2].hash)
    for i in range(2):
        with transaction.atomic():
            audit_append(kind="token_issued", actor="bob", serial=f"SN-NEW-{i}")
    audit_chain_pending()

    with pytest.raises(CommandError, match="#5: differs from its anchor"):
        call_command("verify_audit", "--anchors", str(anchors))


def test_anchors_accumulate_and_all_are_checked(five_events, tmp_path, capsys):
    anchors = tmp_path / "anchors.jsonl"
    call_command("anchor_audit", "--to", str(anchors))
    with transaction.atomic():
        audit_append(kind="token_issued", actor="bob", serial="SN-6")
    call_command("anchor_audit", "--to", str(anchors))

    call_command("verify_audit", "--anchors", str(anchors))

    assert [json.loads(line)["seq"] for line in anchors.read_text().splitlines()] == [5, 6]
    assert "2 anchor(s) checked" in capsys.readouterr().out
    assert oct(anchors.stat().st_mode & 0o777) == "0o600"


def test_an_unreadable_anchor_source_is_one_line_and_exit_1(five_events, tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("verify_audit", "--anchors", str(tmp_path / "none.jsonl"))
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(CommandError, match="line 1 is not an anchor"):
        call_command("verify_audit", "--anchors", str(tmp_path / "bad.jsonl"))


def test_anchors_in_s3_under_object_lock(five_events, aws_mock, capsys):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="cvm-audit", ObjectLockEnabledForBucket=True)

    call_command("anchor_audit", "--to", "s3://cvm-audit/anchors/")
    call_command("verify_audit", "--anchors", "s3://cvm-audit/anchors/")

    (entry,) = s3.list_objects_v2(Bucket="cvm-audit", Prefix="anchors/")["Contents"]
    assert s3.head_object(Bucket="cvm-audit", Key=entry["Key"])["ObjectLockMode"] == "COMPLIANCE"
    sql("DELETE FROM provisioning_auditevent WHERE seq = 5")
    sql("UPDATE provisioning_auditchainhead SET last_seq = 4, last_hash = %s WHERE id = 1", five_events[3].hash)
    with pytest.raises(CommandError, match="#5: anchored"):
        call_command("verify_audit", "--anchors", "s3://cvm-audit/anchors/")


def test_events_written_before_a_key_rotation_verify_with_the_old_key_as_fallback(five_events, settings):
    old = settings.CVM_AUDIT_HMAC_KEY
    settings.CVM_AUDIT_HMAC_KEY = "a-brand-new-audit-hmac-key-000000000000000"
    with transaction.atomic():
        audit_append(kind="token_issued", actor="after-rotation")
    audit_chain_pending()

    assert audit_verify() != [], "the old events do not verify under the new key alone"
    settings.CVM_AUDIT_HMAC_KEY_FALLBACKS = [old]
    assert audit_verify() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the append-only triggers are PostgreSQL's")
def test_postgresql_refuses_update_and_delete_of_audit_rows(five_events):
    from django.db import DatabaseError

    for statement in (
        "UPDATE provisioning_auditevent SET actor = 'mallory' WHERE seq = 3",
        "DELETE FROM provisioning_auditevent WHERE seq = 5",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert audit_verify() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the append-only triggers are PostgreSQL's")
def test_postgresql_lets_only_the_sequencer_touch_an_unchained_event(five_events):
    from django.db import DatabaseError

    with transaction.atomic():
        audit_append(kind="device_revoked", actor="alice", serial="SN-9")
    pending = AuditEvent.objects.get(seq__isnull=True).id
    for statement in (
        "UPDATE provisioning_auditevent SET actor = 'mallory' WHERE id = %s",
        "UPDATE provisioning_auditevent SET seq = 6, hash = 'f', actor = 'mallory' WHERE id = %s",
        "UPDATE provisioning_auditevent SET seq = 99, hash = 'f' WHERE seq = 5 AND id <> %s",  # a chained one
        "DELETE FROM provisioning_auditevent WHERE id = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [pending])
    assert audit_chain_pending() == 1
    assert AuditEvent.objects.get(id=pending).actor == "alice"
    assert audit_verify() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite serialises every writer anyway")
def test_writers_do_not_wait_for_the_chain_head(five_events):
    """While the sequencer holds the head's lock, a change still writes its event at once."""
    import threading

    from provisioning.models import AuditChainHead

    locked, release = threading.Event(), threading.Event()

    def sequencer_round() -> None:
        from django.db import connection as thread_connection

        try:
            with transaction.atomic():
                AuditChainHead.objects.select_for_update().get(pk=1)
                locked.set()
                release.wait(10)
        finally:
            thread_connection.close()

    holder = threading.Thread(target=sequencer_round)
    holder.start()
    try:
        assert locked.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Any wait for the head's lock would fail here instead of blocking.
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            audit_append(kind="token_issued", actor="alice", serial="SN-NOWAIT")
    finally:
        release.set()
        holder.join()
    assert AuditEvent.objects.filter(serial="SN-NOWAIT", seq__isnull=True).exists()


def test_recent_unchained_events_are_not_a_problem_and_verify_only_reads(five_events, capsys):
    with transaction.atomic():
        audit_append(kind="token_issued", actor="alice", serial="SN-NEW")

    call_command("verify_audit")

    out = capsys.readouterr().out
    assert out.startswith("audit log intact: 5 event(s), head ")
    assert "1 newer event(s) wait for the worker to chain them" in out
    assert AuditEvent.objects.get(serial="SN-NEW").seq is None, "verify_audit writes nothing"


def test_an_event_left_unchained_for_over_a_minute_is_reported(five_events):
    from datetime import timedelta
    from unittest import mock

    from django.utils import timezone

    # Written 61 s ago by a writer whose worker never came: its MAC is of that time, as a real one's is.
    past = timezone.now() - timedelta(seconds=61)
    with mock.patch("provisioning.audit.timezone.now", return_value=past), transaction.atomic():
        audit_append(kind="token_issued", actor="alice", serial="SN-STUCK")

    with pytest.raises(CommandError, match=r"1 event\(s\) not chained yet.*is the worker \(sync_dynamodb\) running"):
        call_command("verify_audit")
    audit_chain_pending()
    assert audit_verify() == []


def test_the_worker_chains_events_within_a_second(five_events):
    import threading
    import time

    from provisioning.audit import audit_follow

    stop = threading.Event()
    worker = threading.Thread(target=audit_follow, kwargs={"stop": stop})
    worker.start()
    try:
        with transaction.atomic():
            audit_append(kind="token_issued", actor="alice", serial="SN-FOLLOWED")
        deadline = time.monotonic() + 10  # generous: a busy CI machine; the worker chains every 0.25 s
        while AuditEvent.objects.get(serial="SN-FOLLOWED").seq is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
    assert AuditEvent.objects.get(serial="SN-FOLLOWED").seq == 6
    assert audit_verify() == []


def test_anchoring_chains_what_is_pending_first(five_events, tmp_path):
    from provisioning.anchors import anchor_write

    with transaction.atomic():
        audit_append(kind="token_issued", actor="alice", serial="SN-ANCHORED")

    anchor = anchor_write(sink=str(tmp_path / "anchors.jsonl"))

    assert anchor.seq == 6
    assert AuditEvent.objects.get(serial="SN-ANCHORED").hash == anchor.head


def _unchain_and_rewind(from_seq: int) -> None:
    """What an insider without the key might try: hand events back to the sequencer, so that it signs
    them again, after rewinding the head to the event before them."""
    before = AuditEvent.objects.get(seq=from_seq - 1)
    sql("UPDATE provisioning_auditevent SET seq = NULL, prev_hash = '', hash = '' WHERE seq >= %s", from_seq)
    sql("UPDATE provisioning_auditchainhead SET last_seq = %s, last_hash = %s WHERE id = 1", before.seq, before.hash)


def test_the_sequencer_does_not_sign_events_altered_before_chaining(five_events):
    _unchain_and_rewind(3)
    sql("UPDATE provisioning_auditevent SET actor = 'mallory' WHERE serial = 'SN-3'")

    assert audit_chain_pending() == 2, "the unaltered events are chained again, as they were"
    assert AuditEvent.objects.get(serial="SN-3").seq is None, "the altered one is never signed"
    assert [str(p) for p in audit_verify() if "MAC" in str(p)] == [
        f"audit log: unchained event id {AuditEvent.objects.get(serial='SN-3').id} does not match its "
        "writer's MAC: altered or forged"
    ]


def test_a_forged_event_is_never_chained(five_events):
    sql(
        "INSERT INTO provisioning_auditevent (created_at, kind, actor, serial, client_address, data, prev_hash,"
        " hash, mac) VALUES (%s, 'device_revoked', 'staff:alice', 'SN-9', NULL, '{}', '', '', %s)",
        five_events[0].created_at,  # back-dated, as a fake "historical" event would be
        "0" * 64,
    )

    assert audit_chain_pending() == 0
    assert AuditEvent.objects.get(serial="SN-9").seq is None
    assert any("does not match its writer's MAC" in str(p) for p in audit_verify())


def test_the_sequencer_does_not_build_on_a_rewound_head(five_events):
    from provisioning.audit import AuditChainBroken

    sql("UPDATE provisioning_auditchainhead SET last_seq = 3, last_hash = %s WHERE id = 1", five_events[2].hash)
    with transaction.atomic():
        audit_append(kind="token_issued", actor="alice", serial="SN-NEXT")

    with pytest.raises(AuditChainBroken, match=r"head \(#3\) does not match its newest event \(#5\)"):
        audit_chain_pending()
    assert AuditEvent.objects.get(serial="SN-NEXT").seq is None


def test_events_from_ipv6_and_with_any_data_are_chained(db):
    with transaction.atomic():
        audit_append(
            kind="vend_refused",
            actor="device",
            serial="SN-Ü",
            client_address="2001:0db8:0000::0001",
            data={"reason": "token_wrong", "when": timezone_now(), "n": 1.5, "list": (1, "ä")},
        )
    assert audit_chain_pending() == 1
    assert audit_verify() == []


def timezone_now():
    from django.utils import timezone

    return timezone.now()


@pytest.mark.parametrize(
    "serial", ["SN-1", "", 'SN-"quoted"', "SN-\\back\\slash", "SN-Ü-€-😀", "SN-\n\t\x00", "SN-</script>"]
)
def test_a_batch_signs_each_event_exactly_as_one_event_alone(serial):
    from provisioning.audit import _content_mac, _content_mac_signer

    created = timezone_now()
    key = b"k" * 32
    for address, data in [(None, {}), ("2001:db8::1", {"b": 1, "a": ["ä", None, 1.5]})]:
        signer = _content_mac_signer(created, "token_issued", "cli:ö", address, data, key=key)
        assert signer(serial) == _content_mac(created, "token_issued", "cli:ö", serial, address, data, key=key)


def test_a_mixed_batch_is_chained_and_verifies(db):
    from provisioning.audit import NewEvent, audit_append_many

    shared = {"product": "meter"}
    events = [NewEvent(kind="device_registered", actor="cli:a", serial=f"SN-{i}", data=shared) for i in range(50)]
    events += [
        NewEvent(kind="vend_refused", actor="device", serial="SN-7", client_address="192.0.2.1", data={"n": 1}),
        NewEvent(kind="serials_imported", actor="cli:b", data={"created": 50}),
        NewEvent(kind="device_registered", actor="cli:a", serial="SN-50", data={"product": "other"}),
    ]
    with transaction.atomic():
        assert audit_append_many(events) == 53

    assert audit_chain_pending() == 53
    assert audit_verify() == []
    stored = list(AuditEvent.objects.order_by("id").values_list("kind", "actor", "serial", "client_address", "data"))
    assert stored == [(e.kind, e.actor, e.serial, e.client_address, e.data) for e in events]


def _migrate(target: str | None):
    """Migrate the app to `target`, or (None) to its newest migration, as later tests expect."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    targets = (
        [("provisioning", target)]
        if target
        else [node for node in executor.loader.graph.leaf_nodes() if node[0] == "provisioning"]
    )
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def _plain_log(apps, count: int) -> str:
    """A log as the portal wrote it before the chain was keyed: plain SHA-256."""
    from django.utils import timezone

    from provisioning.audit import _body

    Event = apps.get_model("provisioning", "AuditEvent")
    Head = apps.get_model("provisioning", "AuditChainHead")
    sql("DELETE FROM provisioning_auditevent")
    prev = "0" * 64
    for seq in range(1, count + 1):
        created = timezone.now()
        digest = hashlib.sha256(_body(seq, created, "token_issued", "alice", f"SN-{seq}", None, {}, prev)).hexdigest()
        Event.objects.create(
            seq=seq, created_at=created, kind="token_issued", actor="alice", serial=f"SN-{seq}", data={},
            prev_hash=prev, hash=digest,
        )  # fmt: skip
        prev = digest
    Head.objects.update_or_create(pk=1, defaults={"last_seq": count, "last_hash": prev})
    return prev


def test_the_keying_migration_rechains_an_intact_plain_log(transactional_db):
    try:
        plain_head = _plain_log(_migrate("0007_product_name_rule"), 3)
        _migrate("0008_audit_keyed_chain")
        _migrate(None)  # the later migrations leave chained events as they are; verify with today's schema

        assert audit_verify() == []
        assert AuditEvent.objects.get(seq=3).hash != plain_head, "re-chained under the key"
    finally:
        _migrate(None)


def test_the_keying_migration_refuses_to_launder_an_altered_log(transactional_db):
    try:
        _plain_log(_migrate("0007_product_name_rule"), 3)
        sql("UPDATE provisioning_auditevent SET actor = 'mallory' WHERE seq = 2")
        with pytest.raises(RuntimeError, match="audit event #2 does not verify under the old chain"):
            _migrate("0008_audit_keyed_chain")
    finally:
        sql("DELETE FROM provisioning_auditevent")
        _migrate(None)


def test_a_rewound_head_is_one_line_from_the_commands_and_the_mirror_still_drains(five_events, tmp_path, capsys):
    sql("UPDATE provisioning_auditchainhead SET last_seq = 3, last_hash = %s WHERE id = 1", five_events[2].hash)
    with transaction.atomic():
        audit_append(kind="token_issued", actor="alice", serial="SN-NEXT")

    with pytest.raises(CommandError, match=r"head \(#3\) does not match"):
        call_command("anchor_audit", "--to", str(tmp_path / "anchors.jsonl"))
    assert not (tmp_path / "anchors.jsonl").exists(), "a broken head is never anchored"
    call_command("sync_dynamodb", "--once")
    assert "does not match its newest event" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["", "  "])
def test_an_empty_anchors_argument_is_refused_not_skipped(five_events, source):
    with pytest.raises(CommandError, match="--anchors needs a file path"):
        call_command("verify_audit", "--anchors", source)


def test_an_anchor_source_without_anchors_is_refused(five_events, tmp_path):
    empty = tmp_path / "anchors.jsonl"
    empty.write_text("")
    with pytest.raises(CommandError, match="holds no anchor"):
        call_command("verify_audit", "--anchors", str(empty))


@pytest.mark.parametrize(
    ("command", "spelling"),
    [
        ("anchor_audit", ["--to", "a.jsonl", "--to", "b.jsonl"]),
        ("anchor_audit", ["--to=a.jsonl", "--to", "b.jsonl"]),
        ("verify_audit", ["--anchors", "a.jsonl", "--anchors=b.jsonl"]),
    ],
)
def test_a_repeated_single_value_option_is_refused(five_events, command, spelling):
    with pytest.raises(CommandError, match="was given more than once"):
        call_command(command, *spelling)


def test_an_anchor_sink_that_cannot_keep_it_is_one_line(five_events, tmp_path):
    sink = tmp_path / "anchors.jsonl"
    sink.symlink_to("/dev/null")  # takes the write, refuses the fsync that makes it durable
    with pytest.raises(CommandError, match="cannot write"):
        call_command("anchor_audit", "--to", str(sink))


def test_a_sink_that_cannot_be_opened_is_refused_before_anything_is_chained(five_events, tmp_path):
    with transaction.atomic():
        audit_append(kind="token_issued", actor="alice", serial="SN-PENDING")

    with pytest.raises(CommandError, match="cannot open"):
        call_command("anchor_audit", "--to", str(tmp_path / "no-such-directory" / "anchors.jsonl"))

    assert AuditEvent.objects.filter(seq__isnull=True).count() == 1, "a refused command changed nothing"


def test_an_s3_sink_that_refuses_names_s3_not_aws_iot(five_events, aws_mock):
    with pytest.raises(CommandError, match=r"^Amazon S3 refused PutObject \(NoSuchBucket\)"):
        call_command("anchor_audit", "--to", "s3://no-such-bucket/anchors/")
