"""The store's figures for Prometheus, read from its stats at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily


class StoreCollector:
    def __init__(self, core):
        self._core = core

    def describe(self):
        return []

    def collect(self):
        s = self._core.stats
        c = CounterMetricFamily("adapterfleet_store_bytes", "adapter file bytes by direction", labels=["direction"])
        c.add_metric(["received"], s.bytes_received)
        c.add_metric(["deduplicated"], s.bytes_deduplicated)
        c.add_metric(["sent"], s.bytes_sent)
        yield c
        c = CounterMetricFamily("adapterfleet_store_pushes", "pushes by outcome", labels=["outcome"])
        c.add_metric(["created"], s.versions_created)
        c.add_metric(["unchanged"], s.pushes_unchanged)
        yield c
