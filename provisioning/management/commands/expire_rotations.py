from django.core.management.base import CommandError

from provisioning.services.rotation import rotations_expire

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Roll back every rotation left unconfirmed past CVM_ROTATION_GRACE_SECONDS: the pending certificate is "
        "set REVOKED and detached, the previous one stays current. Idempotent, for cron."
    )

    def handle(self, *args, **options):
        report = rotations_expire()
        for serial in report.rolled_back:
            self.stdout.write(f"rolled back the rotation of {serial}")
        for serial, why in report.failed.items():
            self.stderr.write(f"not rolled back: {serial}: {why}")
        self.stdout.write(f"rolled back {len(report.rolled_back)} rotation(s)")
        if report.failed:
            raise CommandError(f"{len(report.failed)} rotation(s) could not be rolled back; run it again")
