from django.core.management.base import CommandError

from provisioning.services import devices_check, devices_revoke, revoke_check

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Revoke devices' certificates in AWS IoT (REVOKED, detached) and in the database."

    def add_arguments(self, parser):
        parser.add_argument("serials", nargs="+", metavar="SERIAL", help="one or more serials")
        parser.add_argument("--reason", required=True, help="why, for the audit log")

    def handle(self, *args, serials, reason, **options):
        if not reason.strip():
            raise CommandError("--reason must not be empty")
        # Every serial is checked before any is revoked: a typo in the tenth must not leave nine done.
        serials = devices_check(serials=serials, check=revoke_check)
        outcome = devices_revoke(serials=serials, reason=reason, actor=self.actor())
        for serial in outcome.succeeded:
            self.stdout.write(f"revoked {serial}")
        # Skipped: a device that changed state after the check above (a race); failed: AWS.
        not_done = {**outcome.skipped, **outcome.failed}
        for serial, why in not_done.items():
            self.stderr.write(f"not revoked: {serial}: {why}")
        if not_done:
            raise CommandError(
                f"{len(not_done)} of {len(serials)} device(s) not revoked; run the command again for them"
            )
        self.stdout.write(f"revoked {len(outcome.succeeded)} device(s)")
