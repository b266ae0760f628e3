"""The worker's figures for Prometheus, read from its cache and engine stats at scrape time."""

from __future__ import annotations

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.tiers import CACHE_TIERS, DISK, HOST

LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def load_histogram(metrics: ServiceMetrics) -> Histogram:
    """Seconds a request waited for its adapter to become active (fetch + verify + install, or a shared load)."""
    return Histogram("adapterfleet_worker_adapter_load_seconds", "wait for an adapter to become active on a miss",
                     buckets=LOAD_BUCKETS, registry=metrics.registry)


class WorkerCollector:
    def __init__(self, core):
        self._core = core

    def describe(self):
        return []  # collected lazily: no values read at registration

    def collect(self):
        core, stats = self._core, self._core.cache.stats
        c = CounterMetricFamily("adapterfleet_worker_cache_requests", "adapter lookups by result", labels=["result"])
        c.add_metric(["hit"], stats.hits)
        c.add_metric(["miss"], stats.misses)
        yield c
        c = CounterMetricFamily("adapterfleet_worker_cache_loads", "adapters loaded into the host tier, by source",
                                labels=["source"])
        c.add_metric(["store"], stats.cold_loads)
        c.add_metric([DISK], stats.disk_loads)
        c.add_metric([HOST], stats.host_loads)
        yield c
        c = CounterMetricFamily("adapterfleet_worker_cache_evictions", "evictions by tier", labels=["tier"])
        for tier, n in sorted(dict(stats.evictions).items()):
            c.add_metric([tier], n)
        yield c
        yield CounterMetricFamily("adapterfleet_worker_fetched_bytes", "adapter bytes fetched from the store",
                                  value=stats.fetched_bytes)
        g = GaugeMetricFamily("adapterfleet_worker_cache_bytes", "bytes held per tier", labels=["tier"])
        for tier in CACHE_TIERS:
            g.add_metric([tier], core.cache.tier_bytes(tier))
        yield g
        yield GaugeMetricFamily("adapterfleet_worker_adapters_resident", "adapters in any tier",
                                value=len(core.cache.entries()))
        yield GaugeMetricFamily("adapterfleet_worker_inflight", "requests in flight", value=core.inflight)
        yield GaugeMetricFamily("adapterfleet_worker_queue_depth", "requests waiting to join the batch",
                                value=core.engine.queue_depth)
        yield GaugeMetricFamily("adapterfleet_worker_batch_running", "sequences in the running batch",
                                value=core.engine.stats.running)
        yield CounterMetricFamily("adapterfleet_worker_tokens_generated", "tokens generated",
                                  value=core.engine.stats.tokens)
