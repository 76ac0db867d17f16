"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide).

With several workers (``python -m serve --workers N``) each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set before the workers start) and
``/metrics``, whichever worker answers it, sums the counters and histograms of all of them and lists each live
worker's served version.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

ENDPOINTS = {"/candidates", "/events", "/healthz", "/readyz", "/metrics", "/admin/swap", "/admin/items", "/docs",
             "/openapi.json"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("retrieval_requests_total", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("retrieval_request_seconds", "HTTP request latency", ["endpoint", "status"],
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
                                 registry=self.registry)
        self.fallbacks = Counter("retrieval_fallback_total", "answers from the popularity fallback (unknown users)",
                                 registry=self.registry)
        self.live_events = Counter("retrieval_live_events_total", "events accepted by POST /events",
                                   registry=self.registry)
        self.live_answers = Counter("retrieval_live_answers_total", "answers from the user tower run on live events",
                                    registry=self.registry)
        self.live_batch = Histogram("retrieval_live_batch_users", "users embedded by one run of the user tower "
                                    "(live requests that arrived together, serve/batcher.py)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.utility_answers = Counter("retrieval_utility_answers_total", "answers ranked by a caller's utility",
                                       registry=self.registry)
        self.utility_uncertified = Counter("retrieval_utility_uncertified_total", "utility answers whose search "
                                           "widening reached its cap before the threshold proved them",
                                           registry=self.registry)
        self.live_evictions = Counter("retrieval_live_evictions_total", "users evicted from the in-memory live store",
                                      registry=self.registry)
        self.connections_delayed = Counter("retrieval_connections_delayed_total", "new connections that waited "
                                           "for their turn: their address was over its rate (serve/admission.py)",
                                           registry=self.registry)
        self.connections_refused = Counter("retrieval_connections_refused_total", "new connections refused unread "
                                           "(429): their address was too far over its rate", registry=self.registry)
        self.swap_failures = Counter("retrieval_swap_failures_total", "artifact swaps refused", registry=self.registry)
        self.version = Gauge("retrieval_artifact_info", "the artifact being served", ["model_version"],
                             registry=self.registry, multiprocess_mode="liveall")
        self.shown: str | None = None  # the version the gauge says now

    def set_version(self, version: str) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # labels cannot be removed there: the old one reads 0
            if self.shown is not None:
                self.version.labels(model_version=self.shown).set(0)
        else:
            self.version.clear()
        self.version.labels(model_version=version).set(1)
        self.shown = version

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every worker's values, from their files
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """A worker that stops takes its version off the live list (multiprocess mode; nothing otherwise)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())

    class Middleware:
        """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path): count and time requests."""

        def __init__(self, app, metrics: Metrics):
            self.app, self.metrics = app, metrics

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            start, status = time.perf_counter(), [500]

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                path = scope.get("path", "")
                endpoint = path if path in ENDPOINTS else "other"  # bounded label cardinality
                labels = {"endpoint": endpoint, "status": str(status[0])}
                self.metrics.requests.labels(**labels).inc()
                self.metrics.latency.labels(**labels).observe(time.perf_counter() - start)
