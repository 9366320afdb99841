"""Audit events are written unchained and chained afterwards by one sequencer.

`seq` becomes NULL until the event is chained, and the hashes empty; existing events are already
chained and keep their values. On PostgreSQL the append-only trigger now lets exactly one UPDATE
through: the sequencer's, which sets `seq`, `prev_hash` and `hash` on a row that has none, and
changes nothing else. Every other UPDATE, and every DELETE, is still refused.
"""

from django.db import migrations, models

TRIGGER = "provisioning_auditevent_append_only"  # the function and trigger migration 0008 made

CONTENT = ["id", "created_at", "kind", "actor", "serial", "client_address", "data"]


def _function(body: str) -> str:
    return f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger AS $$\nBEGIN\n{body}\nEND;\n$$ LANGUAGE plpgsql;"


def chaining_allowed(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite has no roles: the database file's permissions are its only guard
    unchanged = " AND ".join(f"NEW.{column} IS NOT DISTINCT FROM OLD.{column}" for column in CONTENT)
    schema_editor.execute(
        _function(
            f"""
            IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL AND {unchanged} THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'audit events are append-only';"""
        )
    )


def chaining_refused(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(_function("RAISE EXCEPTION 'audit events are append-only';"))


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0014_device_import_batch")]

    operations = [
        migrations.AlterModelOptions(
            name="auditevent",
            options={
                "ordering": ["-id"],
                "permissions": [("view_audit", "Can see the dashboard and export audit data as CSV")],
            },
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="seq",
            field=models.PositiveBigIntegerField(blank=True, null=True, unique=True),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(condition=models.Q(("seq__isnull", True)), fields=["id"], name="audit_unchained"),
        ),
        migrations.RunPython(chaining_allowed, chaining_refused),
    ]
