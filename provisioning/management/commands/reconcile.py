from django.core.management.base import CommandError

from provisioning.reconcile import reconcile_find, reconcile_fix

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Compare the database, the DynamoDB table and AWS IoT; print one line per difference and exit 1 "
        "when there is any. --fix repairs them (the database wins) and exits 0 when all were repaired."
    )

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="repair every difference found")

    def handle(self, *args, fix, **options):
        differences = reconcile_find()
        for difference in differences:
            self.stdout.write(str(difference))
        if not differences:
            self.stdout.write("no differences: database, DynamoDB and AWS IoT agree")
            return
        if not fix:
            raise CommandError(f"{len(differences)} difference(s) found; run with --fix to repair them")
        results = reconcile_fix(differences)
        failed = [result for result in results if result.error]
        for result in failed:
            self.stderr.write(f"not repaired: {result.difference}: {result.error}")
        self.stdout.write(f"repaired {len(results) - len(failed)} of {len(results)} difference(s)")
        if failed:
            raise CommandError(f"{len(failed)} difference(s) could not be repaired")
