import os

from provisioning.services import device_reset
from provisioning.tokenfiles import token_file_write

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Revoke the device's certificate if it has one and write a new token into a new 0600 file."

    def add_arguments(self, parser):
        parser.add_argument("serial")
        parser.add_argument("--out", required=True, help="file to create (never overwritten)")
        parser.add_argument("--reason", default="reset", help="why, for the audit log")
        parser.add_argument("--ttl-days", type=int, help="token lifetime in days (default CVM_TOKEN_TTL_DAYS)")

    def handle(self, *args, serial, out, reason, ttl_days, **options):
        fd = self.open_token_file(out)
        try:
            issued = device_reset(serial=serial, actor=self.actor(), reason=reason, ttl_days=ttl_days)
        except BaseException:
            os.close(fd)
            os.unlink(out)
            raise
        token_file_write(fd, [issued])
        self.stdout.write(f"reset {serial}; new token in {out}")
