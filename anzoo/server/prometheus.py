"""The metrics of ``anzoo serve``, through ``prometheus_client`` (the library Prometheus maintains).

Metric and label names follow Prometheus conventions (``anzoo_`` prefix, ``_total`` counters,
``_seconds`` durations); each service has its own registry, with the client's process, platform
and garbage-collector collectors. The model worker's metrics carry a ``replica`` label (its
index; ``anzoo_replica_up`` maps it to its device).

Several worker processes (uvicorn ``--workers``, gunicorn): set ``PROMETHEUS_MULTIPROC_DIR`` to
an empty folder shared by them before they start; each process then writes its values to files
there and ``/metrics`` answers the sum over the processes (counters and histograms add up, the
queue depth is the sum over the live processes, ``anzoo_ready`` the minimum), as
``prometheus_client``'s multiprocess mode does. Its process collectors are left out then (they
would describe only the process that answered).
"""
from __future__ import annotations

import os

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

__all__ = ["MULTIPROC_ENV", "ServiceMetrics"]

#: the variable that turns on prometheus_client's multiprocess mode (read when it is imported)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A ``_created`` timestamp series beside every counter and histogram doubles the series for no
# dashboard's use; the text format has no place for it other than a series of its own.
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics:
    """The metrics of ``anzoo serve`` in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = registry = CollectorRegistry()
        if not self.multiprocess:
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
            prometheus_client.GCCollector(registry=registry)
        self.requests = Counter("anzoo_requests_total", "HTTP requests answered, by route and status code.",
                                ("route", "status"), registry=registry)
        self.latency = Histogram("anzoo_request_duration_seconds", "Time from request received to response ready.",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter("anzoo_errors_total", "Requests answered with an error, by kind.", ("kind",),
                              registry=registry)
        self.batch_size = Histogram("anzoo_batch_size", "Images per forward pass, by model and replica.",
                                    ("model", "replica"), buckets=BATCH_BUCKETS, registry=registry)
        self.inference = Histogram("anzoo_inference_duration_seconds",
                                   "Model forward time per batch, by model and replica.",
                                   ("model", "replica"), buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("anzoo_queue_depth", "Images waiting for a model replica.",
                                 multiprocess_mode="livesum", registry=registry)
        self.ready = Gauge("anzoo_ready", "1 when the models are loaded and warmed up on a replica at least.",
                           multiprocess_mode="livemin", registry=registry)
        self.replica_up = Gauge("anzoo_replica_up", "1 when the replica is in rotation (warm and not failed).",
                                ("replica", "device"), multiprocess_mode="liveall", registry=registry)
        self.replica_failures = Counter("anzoo_replica_failures_total",
                                        "Batches that raised on a replica (see anzoo_replica_up for its rotation).",
                                        ("replica",), registry=registry)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (the text format, or OpenMetrics when ``accept`` asks for it) and its
        content type."""
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return encoder(registry), content_type
        return encoder(self.registry), content_type

    def process_exited(self) -> None:
        """In multiprocess mode, drop this process's live gauges (called at shutdown)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
