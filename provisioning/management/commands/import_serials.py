from django.core.management.base import CommandError

from provisioning.services import ImportInvalid, devices_import, serials_parse_csv

from ._base import PortalCommand, product_arg


class Command(PortalCommand):
    # Run for every batch the factory makes: Django's system checks would import the whole URL
    # configuration (the API and its schema views), 0.4 s of a 100,000-serial run, for a server this
    # command never starts. They check code, not data: `manage.py check` runs them (the test suite does,
    # and `check --deploy` on the production image).
    requires_system_checks = []
    help = (
        "Register serials from a CSV file with the header serial[,product][,attribute ...]; extra columns are "
        "thing attributes (the header names them). All rows or none; each bad row is reported with its line."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file, header serial[,product][,attribute ...]")
        parser.add_argument("--product", type=product_arg, help="product for rows that name none (default: 'default')")

    def handle(self, *args, file, product, **options):
        try:
            with open(file, encoding="utf-8-sig", newline="") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {file}: {exc}") from None
        try:
            rows = serials_parse_csv(text, default_product=product)
            report = devices_import(rows=rows, actor=self.actor())
        except ImportInvalid as exc:
            for error in exc.errors:
                self.stderr.write(error)
            raise CommandError(f"{len(exc.errors)} invalid row(s) in {file}; nothing was imported") from None
        self.stdout.write(
            f"imported {report.created} new serial(s); {report.already_known} already known; "
            f"{report.products_created} new product(s)"
        )
