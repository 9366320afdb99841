from django.conf import settings

from provisioning import aws
from provisioning.models import Product
from provisioning.services.products import product_aws_ensure

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Create the AWS IoT device policy, the DynamoDB association table, and what each product names (its "
        "policy, thing type, thing groups) if they are missing; idempotent."
    )

    def handle(self, *args, **options):
        policy = settings.CVM_IOT_POLICY_NAME
        table = settings.CVM_DYNAMODB_TABLE
        created = aws.policy_ensure(policy_name=policy)
        self.stdout.write(f"IoT policy {policy}: {'created' if created else 'already present'}")
        created = aws.table_ensure(table_name=table)
        self.stdout.write(f"DynamoDB table {table}: {'created' if created else 'already present'}")
        for product in Product.objects.order_by("name"):
            for what in product_aws_ensure(product):
                self.stdout.write(f"product {product.name}: created {what}")
