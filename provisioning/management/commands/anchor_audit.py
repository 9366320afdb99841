from django.core.management.base import CommandError

from provisioning.anchors import AnchorSinkInvalid, anchor_write
from provisioning.audit import AuditChainBroken

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Append the audit chain's head (seq, head hash, time) to an append-only sink outside the database: "
        "a file path, or s3://BUCKET/PREFIX (S3 Object Lock)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, metavar="SINK", help="file path or s3://BUCKET/PREFIX")

    def handle(self, *args, to, **options):
        try:
            anchor = anchor_write(sink=to)
        except (AnchorSinkInvalid, AuditChainBroken) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"anchored event #{anchor.seq}, head {anchor.head}, into {to}")
