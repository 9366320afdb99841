import signal
import threading

from django.conf import settings
from django.core.management.base import CommandError

from provisioning.anchors import anchor_write
from provisioning.audit import AuditChainBroken, audit_chain_pending, audit_follow, audit_head
from provisioning.mirror import PeriodicJob, outbox_backlog, outbox_drain, outbox_follow
from provisioning.services.rotation import rotations_expire
from provisioning.webhooks import webhooks_follow

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Push pending device changes to the DynamoDB association table; without --once keeps running as the "
        "portal's worker, which also chains and anchors the audit log, delivers webhooks and rolls back expired "
        "rotations."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="drain everything pending now, then exit")
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args, once, batch_size, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be 1 or more")
        if once:
            self.drain_once(batch_size)
            return
        stop = threading.Event()
        # SIGTERM (systemd, Kubernetes, `make run`) and Ctrl-C finish the batch in hand, then exit.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        # Webhooks in a thread of their own: a receiver that answers slowly must not hold the mirror up.
        webhooks = threading.Thread(target=webhooks_follow, kwargs={"stop": stop}, name="webhooks", daemon=True)
        webhooks.start()
        # The audit sequencer too: events must be chained within a second whatever DynamoDB is doing.
        sequencer = threading.Thread(target=audit_follow, kwargs={"stop": stop}, name="audit", daemon=True)
        sequencer.start()
        try:
            outbox_follow(stop=stop, batch_size=batch_size, jobs=worker_jobs())
        finally:
            stop.set()
            webhooks.join(timeout=30)
            sequencer.join(timeout=30)

    def drain_once(self, batch_size):
        try:
            audit_chain_pending()
        except AuditChainBroken as exc:
            # The mirror does not depend on the chain: report it and drain anyway.
            self.stderr.write(str(exc))
        written = superseded = 0
        while True:
            # Someone asked for a drain now: rows waiting out a back-off are tried again at once.
            report = outbox_drain(batch_size=batch_size, ignore_backoff=True)
            written += report.written
            superseded += report.superseded
            if report.failed or report.handled == 0:
                break
        backlog = outbox_backlog()
        self.stdout.write(f"wrote {written} item(s); {superseded} superseded change(s); {backlog} pending")
        if backlog:
            raise CommandError(f"{backlog} change(s) could not be written to DynamoDB; they will be retried")


ROTATION_EXPIRY_SECONDS = 60


def worker_jobs() -> list[PeriodicJob]:
    """What the long-running worker does beside the mirror, as configured."""
    # Unconfirmed rotations are rolled back within a minute of their grace period's end.
    jobs = [PeriodicJob("expire_rotations", ROTATION_EXPIRY_SECONDS, rotations_expire)]
    if settings.CVM_AUDIT_ANCHOR_SINK:
        anchored: list[int] = []

        def anchor() -> None:
            # Only when the chain moved: an idle portal does not fill the sink with the same head.
            if audit_head().seq not in anchored[-1:]:
                anchored.append(anchor_write(sink=settings.CVM_AUDIT_ANCHOR_SINK).seq)

        jobs.append(PeriodicJob("audit_anchor", settings.CVM_AUDIT_ANCHOR_SECONDS, anchor))
    return jobs
