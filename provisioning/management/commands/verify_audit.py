from django.core.management.base import CommandError

from provisioning.audit import audit_verify
from provisioning.models import AuditChainHead

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Check that the audit log is complete and unaltered; exit 1 at the first break."

    def handle(self, *args, **options):
        problems = audit_verify()
        for problem in problems:
            self.stderr.write(str(problem))
        if problems:
            raise CommandError(f"audit log broken: {problems[0]}")
        head = AuditChainHead.objects.filter(pk=1).first()
        last_seq, last_hash = (head.last_seq, head.last_hash) if head else (0, "-")
        self.stdout.write(f"audit log intact: {last_seq} event(s), head {last_hash}")
