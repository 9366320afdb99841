from provisioning.models import ApiKeyRole
from provisioning.services.apikeys import api_key_create

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Create a staff API key (Authorization: Api-Key <key>) with the permissions of a role's group, and print "
        "it once, alone on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="who uses it, e.g. factory-line-3 (named in the audit log as api-key:NAME)")
        parser.add_argument(
            "--role", required=True, choices=ApiKeyRole.values, help="the group whose permissions it has"
        )

    def handle(self, *args, name, role, **options):
        new = api_key_create(name=name, role=role, actor=self.actor())
        self.stdout.write(
            f"created API key {name!r} (role {role}, prefix {new.api_key.prefix}); it is shown only now, "
            "and is revoked in the admin under Staff API keys:"
        )
        self.stdout.write(new.key)
