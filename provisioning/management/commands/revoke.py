from provisioning.services import device_revoke

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Revoke a device's certificate in AWS IoT (REVOKED, detached) and in the database."

    def add_arguments(self, parser):
        parser.add_argument("serial")
        parser.add_argument("--reason", required=True, help="why, for the audit log")

    def handle(self, *args, serial, reason, **options):
        device = device_revoke(serial=serial, reason=reason, actor=self.actor())
        self.stdout.write(f"revoked {device.serial} (certificate {device.current_certificate})")
