import os

from django.core.management.base import CommandError

from provisioning.services import devices_check, devices_reset, reset_check
from provisioning.tokenfiles import token_file_write

from ._base import PortalCommand, add_ttl_days


class Command(PortalCommand):
    help = "Revoke devices' certificates if they have one and write new tokens into a new 0600 file."

    def add_arguments(self, parser):
        parser.add_argument("serials", nargs="+", metavar="SERIAL", help="one or more serials")
        parser.add_argument("--out", required=True, help="file to create (never overwritten)")
        parser.add_argument("--reason", default="reset", help="why, for the audit log")
        add_ttl_days(parser)

    def handle(self, *args, serials, out, reason, ttl_days, **options):
        # Every serial is checked before any is revoked: a typo in the tenth must not leave nine done.
        serials = devices_check(serials=serials, check=reset_check)
        fd = self.open_token_file(out)
        try:
            outcome = devices_reset(serials=serials, actor=self.actor(), reason=reason, ttl_days=ttl_days)
        except BaseException:
            os.close(fd)
            os.unlink(out)
            raise
        # The tokens of the devices that were reset are written even when others failed: they exist now.
        token_file_write(fd, outcome.tokens)
        for serial in outcome.succeeded:
            self.stdout.write(f"reset {serial}")
        # Skipped: a device that changed state after the check above (a race); failed: AWS.
        not_done = {**outcome.skipped, **outcome.failed}
        for serial, why in not_done.items():
            self.stderr.write(f"not reset: {serial}: {why}")
        if not_done:
            raise CommandError(f"{len(not_done)} of {len(serials)} device(s) not reset; their tokens are not in {out}")
        self.stdout.write(f"reset {len(outcome.succeeded)} device(s); new token(s) in {out}")
