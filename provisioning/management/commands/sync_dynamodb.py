import signal
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections

from provisioning.mirror import outbox_backlog, outbox_drain, outbox_prune

from ._base import PortalCommand

IDLE_SLEEP = 0.5
PRUNE_EVERY = 3600


class Command(PortalCommand):
    help = "Push pending device changes to the DynamoDB association table; keeps running unless --once."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="drain what is pending now, then exit")
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args, once, batch_size, **options):
        if once:
            self.drain_once(batch_size)
            return
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        last_prune = 0.0
        while not stopping:
            try:
                report = outbox_drain(batch_size=batch_size)
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    outbox_prune(older_than=timedelta(days=settings.CVM_OUTBOX_RETENTION_DAYS))
                    last_prune = time.monotonic()
            except DatabaseError:
                # The database went away (restart, failover): reconnect on the next round.
                close_old_connections()
                report = None
            if report is None or report.handled == 0 or report.failed:
                time.sleep(IDLE_SLEEP if report is not None and not report.failed else 2.0)

    def drain_once(self, batch_size):
        written = superseded = 0
        while True:
            report = outbox_drain(batch_size=batch_size)
            written += report.written
            superseded += report.superseded
            if report.failed:
                self.stderr.write(f"{report.failed} change(s) could not be written; they will be retried")
                break
            if report.handled == 0:
                break
        backlog = outbox_backlog()
        self.stdout.write(f"wrote {written} item(s); {superseded} superseded change(s); {backlog} pending")
        if backlog:
            raise SystemExit(1)
