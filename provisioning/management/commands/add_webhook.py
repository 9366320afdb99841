from provisioning.services.webhooks import EVENT_TYPES, webhook_add

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Register a webhook endpoint for some or all event types and print its signing secret (whsec_...) once, "
        "alone on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("url", help="https://… (http:// only to a loopback address, for tests)")
        parser.add_argument(
            "--event",
            nargs="+",
            action="extend",
            dest="events",
            metavar="TYPE",
            choices=EVENT_TYPES,
            default=[],
            help=f"event types to send (default: all): --event A B, or --event A --event B; {', '.join(EVENT_TYPES)}",
        )
        parser.add_argument("--description", default="", help="what the endpoint is, for the admin")

    def handle(self, *args, url, events, description, **options):
        new = webhook_add(url=url, event_types=events, actor=self.actor(), description=description)
        types = ", ".join(new.endpoint.event_types) or "all event types"
        self.stdout.write(
            f"added webhook endpoint {new.endpoint.pk} for {types}: {new.endpoint.url}\n"
            "its signing secret is shown only now; verify deliveries with it (Standard Webhooks):"
        )
        self.stdout.write(new.secret)
