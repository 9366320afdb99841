import signal
import threading

from django.core.management.base import CommandError

from provisioning.imports import imports_follow, imports_run_pending
from provisioning.models import ImportState

from ._base import PortalCommand


class Command(PortalCommand):
    help = "Import the serial batches confirmed in the admin, one at a time; keeps running unless --once."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="import every batch confirmed so far, then exit")

    def handle(self, *args, once, **options):
        if once:
            failed = 0
            for batch in imports_run_pending():
                if batch.state == ImportState.IMPORTED:
                    self.stdout.write(
                        f"{batch.file_name}: imported {batch.created_count} new serial(s); "
                        f"{batch.already_known_count} already known; {batch.products_created} new product(s)"
                    )
                else:
                    failed += 1
                    self.stderr.write(f"{batch.file_name}: {batch.get_state_display()}: {batch.error}")
            if failed:
                raise CommandError(f"{failed} batch(es) were not imported")
            return
        stop = threading.Event()
        # SIGTERM (systemd, Kubernetes, `make run`) and Ctrl-C finish the batch in hand, then exit.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        imports_follow(stop=stop)
