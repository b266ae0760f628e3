"""The router's figures for Prometheus, read from its counters and membership at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class RouterCollector:
    def __init__(self, core):
        self._core = core

    def describe(self):
        return []

    def collect(self):
        core = self._core
        counters = list(core.adapters.values())
        c = CounterMetricFamily("adapterfleet_router_placements", "requests placed on a worker that already held "
                                "the adapter (hit) or had to load it (miss)", labels=["result"])
        c.add_metric(["hit"], sum(x.hits for x in counters))
        c.add_metric(["miss"], sum(x.misses for x in counters))
        yield c
        yield GaugeMetricFamily("adapterfleet_router_affinity_hit_rate", "hits / (hits + misses) since start",
                                value=core.affinity_hit_rate())
        yield CounterMetricFamily("adapterfleet_router_routed", "requests routed", value=core.requests)
        yield CounterMetricFamily("adapterfleet_router_retries", "attempts retried on another worker",
                                  value=core.retries)
        yield CounterMetricFamily("adapterfleet_router_failures", "requests that failed after retries",
                                  value=core.failures)
        yield CounterMetricFamily("adapterfleet_router_replications", "extra copies asked for hot adapters",
                                  value=sum(x.replications for x in counters))
        views = core.membership.views()
        yield GaugeMetricFamily("adapterfleet_router_workers", "workers this router can route to",
                                value=len(views))
        g = GaugeMetricFamily("adapterfleet_router_worker_inflight", "this router's requests in flight per worker",
                              labels=["worker"])
        for view in views:
            g.add_metric([view.address], core.membership.inflight.get(view.id, 0))
        yield g
