import os

from django.core.management.base import CommandError

from provisioning.services import registered_serials, tokens_issue
from provisioning.tokenfiles import token_file_write

from ._base import PortalCommand, add_ttl_days


class Command(PortalCommand):
    # Run for every batch the factory makes: Django's system checks would import the whole URL
    # configuration (the API and its schema views), 0.4 s of a 100,000-serial run, for a server this
    # command never starts. They check code, not data: `manage.py check` runs them (the test suite does,
    # and `check --deploy` on the production image).
    requires_system_checks = []
    help = "Issue one-time registration tokens and write serial,token,expires_at to a new 0600 file."

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument(
            "--serial",
            nargs="+",
            action="extend",
            dest="serials",
            metavar="S",
            help="serials to issue tokens for: --serial A B, or --serial A --serial B",
        )
        group.add_argument("--all-registered", action="store_true", help="every device that has no token yet")
        parser.add_argument("--out", required=True, help="file to create (never overwritten)")
        add_ttl_days(parser)

    def handle(self, *args, serials, all_registered, out, ttl_days, **options):
        serials = registered_serials() if all_registered else list(dict.fromkeys(serials))
        if not serials:
            raise CommandError("no registered devices without a token")
        fd = self.open_token_file(out)
        try:
            tokens = tokens_issue(serials=serials, actor=self.actor(), ttl_days=ttl_days)
        except BaseException:
            os.close(fd)
            os.unlink(out)
            raise
        token_file_write(fd, tokens)
        self.stdout.write(f"issued {len(tokens)} token(s) into {out}")
