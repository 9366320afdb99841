from django.core.management.base import CommandError

from provisioning.anchors import AnchorSinkInvalid, anchors_read
from provisioning.audit import audit_head, audit_unchained, audit_verify

from ._base import PortalCommand


class Command(PortalCommand):
    help = (
        "Check that the audit log is complete and unaltered (keyed hash chain) and that no event has waited "
        "over a minute to be chained; with --anchors, also that no anchored event is missing or different. "
        "Reads only. Exits 1 when it is not."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--anchors", metavar="SOURCE", help="where anchor_audit wrote: a file path or s3://BUCKET/PREFIX"
        )

    def handle(self, *args, anchors, **options):
        if anchors is not None and not anchors.strip():
            # An unset variable in a cron line (`--anchors "$SINK"`) must not pass as "checked".
            raise CommandError("--anchors needs a file path or s3://BUCKET/PREFIX")
        try:
            anchored = anchors_read(source=anchors) if anchors is not None else None
        except AnchorSinkInvalid as exc:
            raise CommandError(str(exc)) from None
        if anchored == []:
            raise CommandError(f"{anchors} holds no anchor: nothing to check the log against (truncated?)")
        problems = audit_verify(anchors=anchored)
        for problem in problems:
            self.stderr.write(str(problem))
        if problems:
            raise CommandError(f"audit log broken: {problems[0]}")
        head = audit_head()
        checked = f"; {len(anchored)} anchor(s) checked" if anchored is not None else ""
        waiting, _ = audit_unchained()
        newer = f"; {waiting} newer event(s) wait for the worker to chain them" if waiting else ""
        self.stdout.write(f"audit log intact: {head.seq} event(s), head {head.head}{checked}{newer}")
