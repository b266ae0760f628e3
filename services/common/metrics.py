"""Prometheus metrics: one registry per service instance (tests run several services in one process), the
request metrics every service shares, and the /metrics HTTP endpoint.

Service-specific figures (cache, routing, bytes) are read from the services' own stats objects at scrape time by a
collector registered beside them, so the hot paths carry no metric calls beyond the per-request ones here.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from adapterfleet.common.metrics_config import MetricsConfig

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["BASE", "LATENCY_BUCKETS", "OTHER", "AdapterLabels", "MetricsConfig", "ServiceMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BASE = "_base"     # the adapter label of requests on the base model alone
OTHER = "_other"   # the adapter label once the label budget is spent


class AdapterLabels:
    """Adapter name (not version: versions come and go) as a label value, with bounded cardinality."""

    def __init__(self, limit: int):
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, ref: str | None) -> str:
        """None: a call about no adapter (label ''); '': the base model."""
        if ref is None:
            return ""
        name = ref.split("@", 1)[0]
        if not name:
            return BASE
        if name in self._seen:
            return name
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(name)
                return name
        return OTHER


class ServiceMetrics:
    """Requests and latency per method, adapter and status code, in a registry of this instance's own."""

    def __init__(self, service: str, cfg: MetricsConfig = MetricsConfig(), registry: CollectorRegistry | None = None):
        self.service = service
        self.cfg = cfg
        self.registry = registry if registry is not None else CollectorRegistry()
        self.adapter_label = AdapterLabels(cfg.adapter_labels)
        self.requests = Counter("adapterfleet_requests", "gRPC calls served, by method, adapter and status code",
                                ["service", "method", "adapter", "code"], registry=self.registry)
        self.latency = Histogram("adapterfleet_request_seconds", "gRPC call duration (streams: until the last "
                                 "message)", ["service", "method", "adapter"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self._http: WSGIServer | None = None

    def observe(self, method: str, adapter_ref: str | None, code: str, seconds: float) -> None:
        adapter = self.adapter_label(adapter_ref)
        self.requests.labels(self.service, method, adapter, code).inc()
        self.latency.labels(self.service, method, adapter).observe(seconds)

    def serve(self) -> int:
        """Start the /metrics endpoint (a daemon thread) when a port is configured; returns the bound port."""
        if not self.cfg.port:
            return 0
        self._http, _ = start_http_server(self.cfg.port, self.cfg.host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
