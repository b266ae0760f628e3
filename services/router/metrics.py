"""The router's figures for Prometheus, read from its counters, membership and resolver at scrape time."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapterfleet.router.breaker import State
from adapterfleet.router.version_stats import version_series


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
        c = CounterMetricFamily("adapterfleet_router_retries", "attempts retried on another worker, by why the "
                                "worker failed (unavailable, cancelled, stalled, ended_early, draining, refused_*)",
                                labels=["reason"])
        for reason, n in sorted(core.retry_reasons.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("adapterfleet_router_failures", "requests that failed, by fault (request: the "
                                "request's own; internal; transport; refused; draining; no_worker) and reason",
                                labels=["fault", "reason"])
        for (fault, reason), n in sorted(core.failure_reasons.items()):
            c.add_metric([fault, reason], n)
        yield c
        c = CounterMetricFamily("adapterfleet_router_worker_internal", "INTERNAL answers returned to callers, per "
                                "worker (not retried; the worker stays healthy)", labels=["worker"])
        for address, n in sorted(core.internal.items()):
            c.add_metric([address], n)
        yield c
        yield CounterMetricFamily("adapterfleet_router_replications", "extra copies asked for hot adapters",
                                  value=sum(x.replications for x in counters))
        yield from _workers(core.membership)
        yield from _cross_region(core.fallback)
        yield from version_series(core.versions)
        yield from _resolver(core.resolver)


def _workers(membership):
    workers = membership.inflight_now()  # runs on the metrics server's thread: reads only
    yield GaugeMetricFamily("adapterfleet_router_workers", "workers this router can route to", value=len(workers))
    g = GaugeMetricFamily("adapterfleet_router_worker_inflight", "this router's requests in flight per worker",
                          labels=["worker"])
    for address, inflight in workers:
        g.add_metric([address], inflight)
    yield g
    breakers = membership.breakers()
    g = GaugeMetricFamily("adapterfleet_router_worker_breaker", "each worker's circuit breaker: 1 for its state "
                          "(closed: in use; open: ejected; half_open: probing)", labels=["worker", "state"])
    e = CounterMetricFamily("adapterfleet_router_worker_ejections", "times a worker was ejected by its breaker",
                            labels=["worker"])
    for record, breaker in breakers:
        for state in State:
            g.add_metric([record.address, state.value], float(breaker.state is state))
        e.add_metric([record.address], breaker.trips)
    yield g
    yield e


def _resolver(resolver):
    yield CounterMetricFamily("adapterfleet_router_resolve_lookups", "refs resolved by asking the store",
                              value=resolver.lookups)
    yield CounterMetricFamily("adapterfleet_router_stale_serves", "resolutions served from the cache while the "
                              "store's watch was down (stale-while-error)", value=resolver.stale_serves)
    yield GaugeMetricFamily("adapterfleet_router_store_watch_up", "1 while the store's change stream is live",
                            value=float(resolver.watch_up))
    yield GaugeMetricFamily("adapterfleet_router_store_watch_down_seconds", "how long the store's change stream "
                            "has been down (0 while live)", value=resolver.stale_for())
    yield CounterMetricFamily("adapterfleet_router_store_watch_breaks", "outages of the store's change stream",
                              value=resolver.watch_breaks)


def _cross_region(fallback):
    """Requests handed to other regions' routers (and received from them): cross-region failover."""
    out = CounterMetricFamily("adapterfleet_router_cross_region", "requests no worker of this region could take, "
                              "forwarded to a fallback region's router, by router and outcome (answered; failed: "
                              "the next fallback was tried)", labels=["router", "outcome"])
    received = CounterMetricFamily("adapterfleet_router_cross_region_received", "requests another region's "
                                   "router forwarded here, by its region", labels=["region"])
    if fallback is not None:
        for address in fallback.routers:
            out.add_metric([address, "sent"], fallback.sent[address])
            out.add_metric([address, "answered"], fallback.answered[address])
            out.add_metric([address, "failed"], fallback.failed[address])
        for region, n in sorted(fallback.received.items()):
            received.add_metric([region], n)
    yield out
    yield received
