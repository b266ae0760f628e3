"""The router's gRPC servicers: the worker API (Generate, Score) for callers and Stats for operators."""

from __future__ import annotations

import time

import grpc

from adapterfleet.common import auth
from adapterfleet.common.channel import REQUEST_ID_HEADER
from adapterfleet.common.logs import request_id
from adapterfleet.common.tiers import tier_to_pb
from adapterfleet.router import fallback
from adapterfleet.router.proxy import RouterCore
from adapterfleet.router.route import Lookaside, Outcome
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2_grpc


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _request_id(context) -> str:
    """The call's id (the caller's x-request-id, or the one the observing interceptor made): sent on to workers."""
    return request_id.get() or dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER, "")


async def _per_worker(context, method: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                        f"{method} acts on one worker, and a router fronts many: call the worker directly (the "
                        "router's adapterfleet.v1.Router/Stats, or FleetClient.stats(), lists each worker's address)")


class RouterWorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Generate and Score, routed. The management calls (LoadAdapter, ...) act on one worker: UNIMPLEMENTED here,
    with a message that says where to send them (a fleet-wide meaning for each would be a different API)."""

    def __init__(self, core: RouterCore):
        self.core = core

    async def LoadAdapter(self, request, context):
        await _per_worker(context, "LoadAdapter")

    async def UnloadAdapter(self, request, context):
        await _per_worker(context, "UnloadAdapter")

    async def Pin(self, request, context):
        await _per_worker(context, "Pin")

    async def ListResident(self, request, context):
        await _per_worker(context, "ListResident")

    async def Stats(self, request, context):
        await _per_worker(context, "Stats")

    async def Generate(self, request, context):
        auth.require(auth.SERVE, "generating", auth.ref_name(request.adapter))  # the worker checks again
        with fallback.receiving(fallback.forwarded_from(context)):  # a call another region forwarded stays here
            async for msg in self.core.generate(request, deadline=_deadline(context),
                                                request_id=_request_id(context)):
                yield msg

    async def Score(self, request, context):
        auth.require(auth.SERVE, "scoring", auth.ref_name(request.adapter))
        with fallback.receiving(fallback.forwarded_from(context)):
            return await self.core.score(request, deadline=_deadline(context), request_id=_request_id(context))


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, core: RouterCore, lookaside: Lookaside | None = None):
        self.core = core
        self.lookaside = lookaside or Lookaside(core)

    async def Route(self, request, context):
        auth.require(auth.SERVE, "routing", auth.ref_name(request.adapter))
        route = await self.lookaside.route(request.adapter, request.routing_key, frozenset(request.exclude),
                                           count=not request.refresh)
        return router_pb2.RouteResponse(
            adapter_key=route.key, ttl_seconds=route.ttl_s,
            candidates=[router_pb2.RouteCandidate(address=w.address, worker_id=w.id, region=w.region, load=w.load,
                                                  tier=tier_to_pb(w.resident.get(route.key, "")))
                        for w in route.candidates])

    async def ReportRoutes(self, request, context):
        auth.require(auth.SERVE, "reporting routes")
        identity = auth.current()

        def key_of(key: str) -> str:  # the adapter counts only for a caller that may serve it
            return key if identity is None or identity.has_tenant(auth.tenant_of(auth.ref_name(key) or "")) else ""

        self.lookaside.report(Outcome(key_of(o.adapter_key), o.worker_id, o.requests, o.retries, o.failed, o.finished)
                              for o in request.outcomes[:10_000])
        return router_pb2.RouteReportAck()

    async def Stats(self, request, context):
        auth.require_service(auth.ADMIN, "the router's stats")
        core = self.core
        now = core._clock()  # noqa: SLF001 - the same clock the placement heat uses
        views = core.membership.views()
        return router_pb2.RouterStats(
            requests=core.requests, retries=core.retries, failures=core.failures,
            affinity_hit_rate=core.affinity_hit_rate(), region=core.cfg.region,
            adapters=[router_pb2.AdapterRouteStats(key=k, hits=c.hits, misses=c.misses,
                                                   replications=c.replications, heat=core.placement.heat(k, now))
                      for k, c in sorted(core.adapters.items())],
            workers=[router_pb2.WorkerRouteStats(id=w.id, address=w.address, region=w.region, load=w.load,
                                                 inflight=core.membership.inflight[w.id], healthy=w.healthy,
                                                 resident=len(w.resident)) for w in views])
