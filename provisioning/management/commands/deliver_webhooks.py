import signal
import threading

from django.core.management.base import CommandError

from provisioning.webhooks import deliveries_pending, deliveries_send, webhooks_follow

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Send pending webhook deliveries, signed per Standard Webhooks, in order per device; without --once keeps "
        "running (the sync_dynamodb worker delivers too)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--once", action="store_true", help="send everything due now (ignoring back-off), then exit"
        )
        parser.add_argument("--batch-size", type=int, default=100)

    def handle(self, *args, once, batch_size, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be 1 or more")
        if once:
            self.send_once(batch_size)
            return
        stop = threading.Event()
        # SIGTERM (systemd, Kubernetes) and Ctrl-C finish the batch in hand, then exit.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        webhooks_follow(stop=stop, batch_size=batch_size)

    def send_once(self, batch_size):
        delivered = failed = 0
        while True:
            # Someone asked for delivery now: deliveries waiting out a back-off are tried at once, each once.
            report = deliveries_send(batch_size=batch_size, ignore_backoff=True)
            delivered += report.delivered
            failed += report.failed
            if report.failed or report.handled == 0:
                break
        pending = deliveries_pending()
        self.stdout.write(f"delivered {delivered} event(s); {failed} failed attempt(s); {pending} pending")
        if pending:
            noun = "delivery is" if pending == 1 else "deliveries are"
            raise CommandError(f"{pending} {noun} still pending; they will be retried (see the admin)")
