"""Webhook delivery (SPEC §10): the deliveries the services queued, sent at least once, in order per device.

`deliveries_send` leases a batch of due deliveries that are each the oldest pending one of their device
for their endpoint, sends them side by side outside any transaction, and records each outcome. A
delivery is signed per the Standard Webhooks specification with its reference library
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`); a 2xx answer
delivers it, anything else (a timeout, a redirect, an error status) schedules another attempt after an
exponential back-off with jitter, and the device's later deliveries to that endpoint wait behind it.
Redirects are never followed: a receiver that moved is a failed delivery the admin shows, not a
request sent somewhere nobody registered.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from standardwebhooks import Webhook

from .models import WebhookDelivery
from .validators import InputInvalid

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=120)  # well above a delivery's connect and read timeouts
SENDERS = 8
FIRST_RETRY_SECONDS = 5
IDLE_SLEEP_SECONDS = 0.5
FAILURE_SLEEP_SECONDS = 2.0
PRUNE_EVERY_SECONDS = 3600
USER_AGENT = "cvm-portal-webhooks/1"
MAX_URL_LENGTH = 2000


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_url_check(url: str) -> str:
    """An endpoint URL: HTTPS, or HTTP to a loopback address (tests, a local relay); no credentials in it."""
    if len(url) > MAX_URL_LENGTH:
        raise InputInvalid(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise InputInvalid(f"{url[:100]!r} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise InputInvalid(f"{url[:100]!r} is not an https:// URL")
    if parts.scheme == "http" and not _loopback(host):
        raise InputInvalid("webhooks are sent over HTTPS only (plain HTTP only to a loopback address, for tests)")
    if parts.username is not None or parts.password is not None:
        raise InputInvalid("the URL must not carry credentials; the signature authenticates the portal")
    if parts.fragment or any(ch.isspace() for ch in url):
        raise InputInvalid(f"{url[:100]!r} is not a plain URL (no spaces, no #fragment)")
    return url


def retry_delay(attempts: int) -> float:
    """Seconds until the next attempt after `attempts` failed ones: doubling from 5 s up to the cap, then
    "equal jitter" (half fixed, half random), so receivers coming back are not hit by every sender at once."""
    ceiling = min(settings.CVM_WEBHOOK_MAX_BACKOFF_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int = 0
    failed: int = 0

    @property
    def handled(self) -> int:
        return self.delivered + self.failed


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _due(now: datetime, *, ignore_backoff: bool):
    earlier_pending = WebhookDelivery.objects.filter(
        endpoint=OuterRef("endpoint"), serial=OuterRef("serial"), delivered_at__isnull=True, id__lt=OuterRef("id")
    )
    due = (
        WebhookDelivery.objects.filter(delivered_at__isnull=True, endpoint__enabled=True)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        # Only the oldest pending delivery of a device to an endpoint: the order per device holds.
        .filter(~Exists(earlier_pending))
    )
    if not ignore_backoff:
        due = due.filter(next_attempt_at__lte=now)
    return due


def _lease_batch(batch_size: int, *, ignore_backoff: bool) -> list[WebhookDelivery]:
    now = timezone.now()
    with transaction.atomic():
        # SKIP LOCKED lets several workers lease disjoint batches on PostgreSQL (a later delivery of a
        # device stays behind the earlier one whoever holds that); SQLite serialises the transaction.
        rows = list(
            _due(now, ignore_backoff=ignore_backoff)
            .select_related("endpoint")
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("next_attempt_at", "id")[:batch_size]
        )
        if rows:
            WebhookDelivery.objects.filter(pk__in=[row.pk for row in rows]).update(leased_until=now + LEASE)
    return rows


_sessions = threading.local()


def _session() -> requests.Session:
    session = getattr(_sessions, "session", None)
    if session is None:
        session = requests.Session()
        # Not the environment's proxies, CA bundle or .netrc credentials: only what the portal configured.
        session.trust_env = False
        _sessions.session = session
    return session


def delivery_headers(delivery: WebhookDelivery, *, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers, signed with the endpoint's secret by the specification's own library."""
    signature = Webhook(delivery.endpoint.secret).sign(delivery.message_id, now.astimezone(UTC), delivery.body)
    return {
        "webhook-id": delivery.message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


def delivery_send(delivery: WebhookDelivery) -> Outcome:
    """POST one delivery; never follows a redirect, never reads more of the answer than its status."""
    try:
        response = _session().post(
            delivery.endpoint.url,
            data=delivery.body.encode(),
            headers=delivery_headers(delivery, now=timezone.now()),
            timeout=(settings.CVM_WEBHOOK_CONNECT_TIMEOUT, settings.CVM_WEBHOOK_READ_TIMEOUT),
            allow_redirects=False,
            stream=True,
            verify=settings.CVM_WEBHOOK_CA_BUNDLE or True,
        )
    except requests.Timeout:
        return Outcome(None, "timeout")
    except requests.exceptions.SSLError:
        return Outcome(None, "TLS failed: the endpoint's certificate did not verify")
    except requests.ConnectionError:
        return Outcome(None, "connection failed")
    except requests.RequestException as exc:
        return Outcome(None, f"{type(exc).__name__}")
    response.close()
    if response.is_redirect:
        return Outcome(response.status_code, f"HTTP {response.status_code}: redirects are not followed")
    if not 200 <= response.status_code < 300:
        return Outcome(response.status_code, f"HTTP {response.status_code}")
    return Outcome(response.status_code, "")


def _record(delivery: WebhookDelivery, outcome: Outcome, now: datetime) -> None:
    attempts = delivery.attempts + 1
    later = WebhookDelivery.objects.filter(
        endpoint_id=delivery.endpoint_id, serial=delivery.serial, delivered_at__isnull=True, id__gt=delivery.pk
    )
    with transaction.atomic():
        if outcome.delivered:
            WebhookDelivery.objects.filter(pk=delivery.pk).update(
                attempts=attempts, last_attempt_at=now, last_status=outcome.status, last_error="",
                delivered_at=now, leased_until=None,
            )  # fmt: skip
            if delivery.attempts:
                # The device's later deliveries waited out this one's back-off: they are due now.
                later.filter(next_attempt_at__gt=now).update(next_attempt_at=now)
            return
        retry_at = now + timedelta(seconds=retry_delay(attempts))
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            attempts=attempts, last_attempt_at=now, last_status=outcome.status, last_error=outcome.error[:255],
            next_attempt_at=retry_at, leased_until=None,
        )  # fmt: skip
        # They cannot go before it anyway; pushed back with it, the worker does not look at them meanwhile.
        later.filter(next_attempt_at__lt=retry_at).update(next_attempt_at=retry_at)


def deliveries_send(*, batch_size: int = 100, ignore_backoff: bool = False) -> DeliveryReport:
    """Send one batch of due deliveries; returns how many were delivered and how many failed."""
    rows = _lease_batch(batch_size, ignore_backoff=ignore_backoff)
    if not rows:
        return DeliveryReport()
    outcomes = list(_pool().map(delivery_send, rows))
    now = timezone.now()
    for delivery, outcome in zip(rows, outcomes, strict=True):
        _record(delivery, outcome, now)
    failed = [(d, o) for d, o in zip(rows, outcomes, strict=True) if not o.delivered]
    if failed:
        logger.warning(
            "webhook delivery failed",
            extra={"failed": len(failed), "endpoint": failed[0][0].endpoint_id, "error": failed[0][1].error},
        )
    return DeliveryReport(delivered=len(rows) - len(failed), failed=len(failed))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhooks")


def deliveries_prune(*, older_than: timedelta) -> int:
    """Delete delivered rows older than the retention period; pending rows are never pruned."""
    deleted, _ = WebhookDelivery.objects.filter(delivered_at__lt=timezone.now() - older_than).delete()
    return deleted


def deliveries_pending() -> int:
    return WebhookDelivery.objects.filter(delivered_at__isnull=True, endpoint__enabled=True).count()


def webhooks_follow(*, stop: threading.Event, batch_size: int = 100) -> None:
    """Keep delivering until `stop` is set: at once while there is work, twice a second when idle.

    Runs in a thread of its own beside the DynamoDB mirror in the worker `make run` starts (a receiver
    that answers slowly must not hold the mirror up), or alone as `deliver_webhooks`.
    """
    last_prune = 0.0
    try:
        while not stop.is_set():
            try:
                report = deliveries_send(batch_size=batch_size)
                if timezone.now().timestamp() - last_prune > PRUNE_EVERY_SECONDS:
                    last_prune = timezone.now().timestamp()
                    deliveries_prune(older_than=timedelta(days=settings.CVM_OUTBOX_RETENTION_DAYS))
            except DatabaseError:
                logger.warning("webhook worker lost the database; retrying")
                close_old_connections()
                stop.wait(FAILURE_SLEEP_SECONDS)
                continue
            if report.handled == 0:
                stop.wait(IDLE_SLEEP_SECONDS)
            elif report.failed and not report.delivered:
                stop.wait(FAILURE_SLEEP_SECONDS)
    finally:
        close_old_connections()
