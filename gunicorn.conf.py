"""gunicorn settings for the portal, for `make run` and production alike (override with flags/env).

gthread workers: a vend spends most of its time waiting on AWS IoT, so threads, not processes, carry
the concurrency. Size with WEB_CONCURRENCY (processes) and GUNICORN_THREADS.
"""

import multiprocessing
import os
import ssl

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8443")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count() + 1)))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# A vend makes at most three dependent AWS round trips, each bounded by botocore's timeouts and
# retries; 60 s is well past that, so a worker killed by the timeout really was stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
max_requests = 10000
max_requests_jitter = 1000
# gunicorn's access log would print the query string; the portal's own JSON request log replaces it.
accesslog = None
errorlog = "-"
loglevel = "warning"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def ssl_context(conf, default_ssl_context_factory):
    """TLS 1.2 or newer only."""
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def on_starting(server):
    """With PROMETHEUS_MULTIPROC_DIR set, start from an empty directory: a container's /tmp is new, but
    samples a previous master left behind would otherwise be added to this one's."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    """Let Prometheus forget a dead worker's live gauges (multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
