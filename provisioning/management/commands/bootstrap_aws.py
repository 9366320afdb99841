from django.conf import settings

from provisioning import aws

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Create the AWS IoT device policy and the DynamoDB association table if they are missing."

    def handle(self, *args, **options):
        policy = settings.CVM_IOT_POLICY_NAME
        table = settings.CVM_DYNAMODB_TABLE
        created = aws.policy_ensure(policy_name=policy)
        self.stdout.write(f"IoT policy {policy}: {'created' if created else 'already present'}")
        created = aws.table_ensure(table_name=table)
        self.stdout.write(f"DynamoDB table {table}: {'created' if created else 'already present'}")
