import argparse

from django.core.management.base import CommandError

from provisioning.services.products import UNSET, product_configure

from ._base import PortalCommand, product_arg


def days_arg(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= 3650:
        raise argparse.ArgumentTypeError("must be 1 to 3650 days")
    return days


class Command(PortalCommand):
    help = (
        "Create or update a product: its IoT policy, thing type, static thing groups and rotation age; "
        "whatever it names is created in AWS IoT if missing. Options not given stay as they are."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", type=product_arg, help="the product's name (an AWS IoT attribute value)")
        parser.add_argument("--description")
        parser.add_argument("--iot-policy", metavar="P", help="policy for its certificates ('' for the default)")
        parser.add_argument("--thing-type", metavar="T", help="thing type of its things ('' for none)")
        parser.add_argument(
            "--thing-group",
            nargs="+",
            action="extend",
            dest="thing_groups",
            metavar="G",
            help="static thing groups its things join (replaces the list): --thing-group A B, or repeated",
        )
        parser.add_argument("--no-thing-groups", action="store_true", help="its things join no group")
        parser.add_argument("--rotate-after-days", type=days_arg, metavar="N", help="rotation due after N days")
        parser.add_argument("--no-rotation", action="store_true", help="no rotation age")

    def handle(self, *args, name, description, iot_policy, thing_type, thing_groups, no_thing_groups, **options):
        if thing_groups is not None and no_thing_groups:
            raise CommandError("give either --thing-group or --no-thing-groups, not both")
        rotate_after_days = options["rotate_after_days"]
        if rotate_after_days is not None and options["no_rotation"]:
            raise CommandError("give either --rotate-after-days or --no-rotation, not both")
        report = product_configure(
            name=name,
            actor=self.actor(),
            description=UNSET if description is None else description,
            iot_policy=UNSET if iot_policy is None else iot_policy,
            thing_type=UNSET if thing_type is None else thing_type,
            thing_groups=[] if no_thing_groups else (UNSET if thing_groups is None else thing_groups),
            rotate_after_days=None
            if options["no_rotation"]
            else (UNSET if rotate_after_days is None else rotate_after_days),
        )
        product = report.product
        for created in report.created_in_aws:
            self.stdout.write(f"created in AWS IoT: {created}")
        verb = "created" if report.created else ("updated" if report.changes else "unchanged")
        self.stdout.write(
            f"product {product.name} {verb}: policy {product.policy_name}, thing type {product.thing_type or '-'}, "
            f"groups {', '.join(product.thing_groups) or '-'}, rotate after {product.rotate_after_days or '-'} days"
        )
