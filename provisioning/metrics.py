"""Prometheus metrics: issuance outcomes and latency, AWS calls and throttles, the DynamoDB backlog.

Under gunicorn each worker is a process; with PROMETHEUS_MULTIPROC_DIR set (`make run` sets it, and
so should a deployment) the workers write their samples there and /metrics adds them up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)

ISSUANCES = Counter("cvm_vend_requests_total", "Device vend requests by outcome", ["outcome"])
VEND_SECONDS = Histogram("cvm_vend_duration_seconds", "Vend latency, request in to answer out", buckets=LATENCY_BUCKETS)
AWS_CALL_SECONDS = Histogram(
    "cvm_aws_call_duration_seconds", "AWS API call latency (retries included)", ["operation"], buckets=LATENCY_BUCKETS
)
AWS_THROTTLES = Counter("cvm_aws_throttles_total", "AWS calls that ended throttled after retries", ["operation"])
ROTATIONS = Counter(
    "cvm_rotations_total", "Certificate rotations by step: started, replayed, confirmed, rolled_back", ["step"]
)
AWS_ERRORS = Counter(
    "cvm_aws_errors_total",
    "AWS calls that failed, by operation, error code and kind (transient, or configuration: needs a person)",
    ["operation", "code", "kind"],
)
AWS_QUOTA_REFUSALS = Counter(
    "cvm_aws_quota_refusals_total", "Calls the quota governor refused (answered 503)", ["operation"]
)


class OutboxCollector:
    """Backlog and lag of the DynamoDB outbox and of the audit sequencer, read from the database at scrape
    time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import Min
        from django.utils import timezone

        from .models import DynamoOutbox

        pending = DynamoOutbox.objects.filter(done_at__isnull=True)
        stats = pending.aggregate(oldest=Min("created_at"))
        backlog = GaugeMetricFamily("cvm_outbox_backlog", "Device changes not yet written to DynamoDB")
        backlog.add_metric([], pending.count())
        yield backlog
        lag = GaugeMetricFamily("cvm_outbox_lag_seconds", "Age of the oldest change not yet in DynamoDB")
        oldest = stats["oldest"]
        lag.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
        yield lag
        from .audit import audit_unchained

        waiting, oldest_event = audit_unchained()
        unchained = GaugeMetricFamily("cvm_audit_unchained", "Audit events committed but not chained yet")
        unchained.add_metric([], waiting)
        yield unchained
        chain_lag = GaugeMetricFamily(
            "cvm_audit_chain_lag_seconds", "Age of the oldest audit event not chained yet (normally under 1 s)"
        )
        chain_lag.add_metric([], (timezone.now() - oldest_event).total_seconds() if oldest_event else 0.0)
        yield chain_lag


def exposition() -> bytes:
    registry = CollectorRegistry()
    registry.register(OutboxCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(registry)
