from django.conf import settings
from django.core.management.base import CommandError

from provisioning.services import legacy_table_import

from ._base import PortalCommand, add_ttl_days, product_arg


class Command(PortalCommand):
    help = (
        "Import devices from the reference CVM's DynamoDB table (serialNumber, deviceToken, certinfo). "
        "Tokens are stored only as HMAC digests; running it twice changes nothing the second time."
    )

    def add_arguments(self, parser):
        parser.add_argument("--table", required=True, help="the reference CVM's DynamoDB table")
        parser.add_argument("--product", type=product_arg, default="legacy", help="product for the imported devices")
        add_ttl_days(parser)
        parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")

    def handle(self, *args, table, product, ttl_days, dry_run, **options):
        if table == settings.CVM_DYNAMODB_TABLE:
            raise CommandError("that is the portal's own association table, not a reference CVM table")
        report = legacy_table_import(
            table_name=table, product=product, actor=self.actor(), ttl_days=ttl_days, dry_run=dry_run
        )
        verb = "would import" if dry_run else "imported"
        for serial in report.with_token:
            self.stdout.write(f"{serial}: {verb} with its token (token_issued)")
        for serial in report.active:
            self.stdout.write(f"{serial}: {verb} with its certificate (active)")
        for serial in report.revoked:
            self.stdout.write(f"{serial}: {verb} as revoked (its certificate is not ACTIVE in AWS IoT)")
        for serial, why in report.skipped.items():
            self.stdout.write(f"{serial}: skipped: {why}")
        self.stdout.write(
            f"{verb} {len(report.with_token) + len(report.active) + len(report.revoked)} device(s) "
            f"({len(report.with_token)} with a token, {len(report.active)} active, {len(report.revoked)} revoked); "
            f"{len(report.already_known)} already known; {len(report.skipped)} skipped"
        )
