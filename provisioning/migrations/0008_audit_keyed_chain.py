"""Key the audit chain with CVM_AUDIT_HMAC_KEY, and on PostgreSQL refuse UPDATE and DELETE of events.

Events written before this migration are chained with plain SHA-256. The chain is checked first, as it
was; only an intact chain is re-chained under the key (so the keying never launders an earlier edit),
and a broken one stops the migration with the first broken event. The canonical form of an event is
copied here, frozen, so later changes to provisioning/audit.py cannot change what this migration did.
"""

import hashlib
import hmac
import json
from datetime import UTC

from django.conf import settings
from django.db import migrations

GENESIS_HASH = "0" * 64
TRIGGER = "provisioning_auditevent_append_only"


def _body(event, prev_hash: str) -> bytes:
    return json.dumps(
        [
            event.seq,
            event.created_at.astimezone(UTC).isoformat(),
            event.kind,
            event.actor,
            event.serial,
            event.client_address,
            event.data,
            prev_hash,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def rekey(apps, schema_editor):
    AuditEvent = apps.get_model("provisioning", "AuditEvent")
    AuditChainHead = apps.get_model("provisioning", "AuditChainHead")
    key = settings.CVM_AUDIT_HMAC_KEY.encode()
    old_prev, new_prev, expected_seq = GENESIS_HASH, GENESIS_HASH, 1
    batch = []
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=2000):
        if (
            event.seq != expected_seq
            or event.prev_hash != old_prev
            or hashlib.sha256(_body(event, event.prev_hash)).hexdigest() != event.hash
        ):
            raise RuntimeError(
                f"audit event #{event.seq} does not verify under the old chain; the log was altered before "
                "this upgrade. Investigate with the previous release's verify_audit before migrating."
            )
        old_prev, expected_seq = event.hash, event.seq + 1
        event.prev_hash = new_prev
        event.hash = hmac.new(key, _body(event, new_prev), hashlib.sha256).hexdigest()
        new_prev = event.hash
        batch.append(event)
        if len(batch) >= 2000:
            AuditEvent.objects.bulk_update(batch, ["prev_hash", "hash"])
            batch.clear()
    AuditEvent.objects.bulk_update(batch, ["prev_hash", "hash"])
    AuditChainHead.objects.filter(pk=1).update(last_hash=new_prev)


def triggers_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite has no roles: the database file's permissions are its only guard
    schema_editor.execute(
        f"""
        CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'audit events are append-only';
        END;
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER {TRIGGER} BEFORE UPDATE OR DELETE ON provisioning_auditevent
            FOR EACH ROW EXECUTE FUNCTION {TRIGGER}();
        """
    )


def triggers_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"DROP TRIGGER IF EXISTS {TRIGGER} ON provisioning_auditevent; DROP FUNCTION IF EXISTS {TRIGGER}();"
    )


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0007_product_name_rule")]

    operations = [
        migrations.RunPython(rekey, migrations.RunPython.noop, elidable=False),
        migrations.RunPython(triggers_create, triggers_drop),
    ]
