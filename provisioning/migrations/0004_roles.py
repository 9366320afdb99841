"""The three staff roles of SPEC §8, as groups with exactly the permissions each needs."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

FACTORY = [
    "view_product",
    "add_product",
    "view_device",
    "add_device",
    "import_devices",
    "issue_token",
]
SECURITY = [
    *FACTORY,
    "revoke_device",
    "reset_device",
    "view_certificate",
    "view_auditevent",
    "view_audit",
    "view_dynamooutbox",
]
AUDITOR = [
    "view_product",
    "view_device",
    "view_certificate",
    "view_auditevent",
    "view_audit",
    "view_dynamooutbox",
]
ROLES = {"factory": FACTORY, "security": SECURITY, "auditor": AUDITOR}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations ran; create them now so the groups can
    # hold them on a fresh database.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=name)
        permissions = list(
            permission_model.objects.filter(content_type__app_label="provisioning", codename__in=codenames)
        )
        missing = set(codenames) - {p.codename for p in permissions}
        if missing:
            raise RuntimeError(f"permissions missing for role {name}: {sorted(missing)}")
        group.permissions.set(permissions)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0003_audit_permissions"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
