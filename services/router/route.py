"""Lookaside routing: the router answers *where* a request should go, and the caller streams to that worker itself.

``Route`` resolves the ref (the resolver's cache and sticky weighted choice, as for a proxied request) and orders
the healthy workers with the same placement a proxied request gets (``placement.choose``: holders within the bound
first, then rendezvous order, then the overloaded). The answer counts as one request sent to its first candidate:
affinity hit or miss, heat (hot-adapter copies start here as they do for proxied requests), the key expected to be
loading there, and one request on that worker's load. A caller renewing a route it still uses
(``RouteRequest.refresh``) is counted nothing: it reports the requests it sends. An answer may be reused for
``route_ttl_s`` (a quarter of that when its first candidate is busier than average: ``route_ttl``).

Direct callers report what they sent where (``report``): further requests count toward heat and the workers' load,
so bounded load and replication keep working while no request passes the router. Reported failures are counted,
not trusted to eject a worker: the breaker feeds on what this router sees itself, so no caller can empty the fleet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from adapterfleet.common.errors import Unavailable
from adapterfleet.router.placement import WorkerView
from adapterfleet.router.proxy import RouterCore
from adapterfleet.store.lru import Lru


@dataclass(frozen=True)
class Route:
    key: str                                # resolved adapter key ("" for the base model)
    candidates: tuple[WorkerView, ...]      # in order: [0] first, the rest the failover order
    ttl_s: float


@dataclass(frozen=True)
class Outcome:
    key: str
    worker_id: str
    requests: int = 0   # begun there beyond the one each Route answer counted
    retries: int = 0    # continued there after another worker failed them
    failed: int = 0     # attempts that failed there for the worker's reasons
    finished: int = 0   # attempts that ended there otherwise


_MAX_REPORTED = 10_000  # per outcome: a bound on what one report can add (a caller's bug must not swamp the view)
_ANSWERED_KEPT = 100_000  # keys this router answered Route for lately: reports count for those only


class Lookaside:
    def __init__(self, core: RouterCore):
        self.core = core
        self.routes = 0          # Route answers given
        self.reported = 0        # requests direct callers reported (beyond the Route answers)
        self.reported_failed = 0
        self._answered: Lru[bool] = Lru(_ANSWERED_KEPT)

    async def route(self, ref: str, routing_key: str = "", exclude: Collection[str] = (),
                    count: bool = True) -> Route:
        """``count=False``: a caller renewing a route it still uses (RouteRequest.refresh); no request is counted
        for the answer, since the caller may send none on it and reports those it does send."""
        core = self.core
        key = await core.resolver.key(ref, routing_key)
        views = core.membership.views()
        region = core.cfg.region
        candidates = core.placement.choose(key, views, region=region, exclude=exclude)
        if not candidates:  # workers may have joined since the last poll: look once more
            with contextlib.suppress(Exception):  # the registry is down: the view we have is all there is
                await core.membership.refresh()
            views = core.membership.views()
            candidates = core.placement.choose(key, views, region=region, exclude=exclude)
        if not candidates:
            raise Unavailable(f"no healthy worker can take a request for {ref or 'the base model'}; the fleet has "
                              f"{len(views)} registered workers ({len(exclude)} excluded by the caller): check "
                              "that workers run and announce to the store")
        first = candidates[0]
        self.routes += 1
        if key:
            self._answered.put(key, True)
        if count:
            core.requests += 1
            if key:
                core.count_pick(key, first, views)
            core.membership.direct(first.id, begun=1)
        if key and key not in first.resident:
            core.membership.expect(first.id, key)  # it is about to load there: keep routing it there
        return Route(key, tuple(candidates), route_ttl(first, views, core.cfg.route_ttl_s))

    def report(self, outcomes: Iterable[Outcome]) -> None:
        core = self.core
        views = None
        for o in outcomes:
            requests = min(max(o.requests, 0), _MAX_REPORTED)
            retries = min(max(o.retries, 0), _MAX_REPORTED)
            failed = min(max(o.failed, 0), _MAX_REPORTED)
            finished = min(max(o.finished, 0), _MAX_REPORTED)
            if core.membership.record(o.worker_id) is None:
                continue  # a worker this router does not know (gone, or another region's router's)
            self.reported += requests
            self.reported_failed += failed
            core.requests += requests
            core.retries += failed
            core.membership.direct(o.worker_id, begun=requests + retries, ended=failed + finished)
            # only keys this router answered Route for lately count: a report cannot make up keys (each kept for
            # good in the router's counters) nor, through the router's own token, have workers load an adapter
            # nobody asked a route for (the servicer also drops keys of tenants the caller does not hold)
            if o.key and requests and self._answered.get(o.key):
                views = views or core.membership.views()
                worker = next((w for w in views if w.id == o.worker_id), None)
                if worker is not None:
                    core.count_pick(o.key, worker, views, requests)


def route_ttl(first: WorkerView, views: Sequence[WorkerView], ttl_s: float) -> float:
    """How long a Route answer may be reused. Its callers keep sending to ``first`` for that long without asking:
    fine while ``first`` has headroom, not when it is busier than the average worker of its region, where one
    more second of everyone's traffic could push it over the bound. Such an answer lives a quarter as long.
    (``benchmarks/routing_sim.py`` ours-direct: this keeps the placement goals that a plain TTL misses.)"""
    group = [w.load for w in views if w.healthy and w.region == first.region]
    if group and first.load > sum(group) / len(group):
        return ttl_s / 4
    return ttl_s
