"""The writer's MAC of each audit event's content, checked by the sequencer before it chains the event.

Events already in the log are chained and keep an empty `mac`. On PostgreSQL the append-only trigger
counts `mac` as content: the sequencer's one permitted UPDATE may not change it either.
"""

from django.db import migrations, models

TRIGGER = "provisioning_auditevent_append_only"  # the function and trigger migration 0008 made

BEFORE = ["id", "created_at", "kind", "actor", "serial", "client_address", "data"]
AFTER = [*BEFORE, "mac"]


def _chaining_only(columns: list[str]) -> str:
    unchanged = " AND ".join(f"NEW.{column} IS NOT DISTINCT FROM OLD.{column}" for column in columns)
    return (
        f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger AS $$\nBEGIN\n"
        f"IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL AND {unchanged} THEN\n"
        "    RETURN NEW;\nEND IF;\nRAISE EXCEPTION 'audit events are append-only';\n"
        "END;\n$$ LANGUAGE plpgsql;"
    )


def mac_is_content(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_chaining_only(AFTER))


def mac_is_not_content(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_chaining_only(BEFORE))


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0015_audit_sequencer")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="mac",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.RunPython(mac_is_content, mac_is_not_content),
    ]
