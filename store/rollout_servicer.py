"""The Rollouts gRPC servicer (hosted by the store process): proto in, one domain call, proto out."""

from __future__ import annotations

from adapterfleet.common import auth
from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.rollout_figures import N_BUCKETS, Figures
from adapterfleet.store.rollout_record import MAX_REGIONS, MAX_STEPS, to_pb
from adapterfleet.store.rollout_service import MAX_REPORTED_VERSIONS, RolloutService, Shown, StartSpec
from adapterfleet.v1 import rollout_pb2, rollout_pb2_grpc


def _status(s: Shown) -> rollout_pb2.RolloutStatus:
    return to_pb(s.rollout, s.pending_command, s.owner)


class RolloutServicer(rollout_pb2_grpc.RolloutsServicer):
    def __init__(self, service: RolloutService):
        self.service = service

    async def Start(self, request, context):
        auth.require(auth.ADMIN, "starting a rollout", request.name)  # it moves the alias
        if len(request.steps) > MAX_STEPS or len(request.regions) > MAX_REGIONS:
            raise InvalidArgument(f"a rollout has at most {MAX_STEPS} steps and {MAX_REGIONS} regions")
        spec = StartSpec(
            name=request.name, alias=request.alias, to_version=request.to_version, steps=tuple(request.steps),
            interval_s=request.interval_seconds,
            max_error_rate=request.max_error_rate if request.has_max_error_rate else None,
            max_p99_ms=request.max_p99_ms, min_requests=request.min_requests if request.has_min_requests else None,
            regions=tuple(request.regions), warm=not request.no_warm, warm_timeout_s=request.warm_timeout_seconds)
        return _status(await self.service.start(spec))

    async def Status(self, request, context):
        auth.require(auth.READ, "a rollout's status", request.name)
        return _status(await self.service.status(request.name, request.alias))

    async def Pause(self, request, context):
        auth.require(auth.ADMIN, "pausing a rollout", request.name)
        return _status(await self.service.command(request.name, request.alias, "pause"))

    async def Resume(self, request, context):
        auth.require(auth.ADMIN, "resuming a rollout", request.name)
        return _status(await self.service.command(request.name, request.alias, "resume"))

    async def Abort(self, request, context):
        auth.require(auth.ADMIN, "aborting a rollout", request.name)
        return _status(await self.service.command(request.name, request.alias, "abort"))

    async def List(self, request, context):
        auth.require(auth.READ, "listing rollouts")
        return rollout_pb2.ListRolloutsResponse(rollouts=[_status(s) for s in await self.service.list(request.prefix)
                                                          if auth.visible(s.rollout.name)])

    async def ReportVersionStats(self, request, context):
        auth.require_service(auth.SERVE, "reporting traffic figures")  # routers: they judge every tenant's rollout
        if len(request.windows) > MAX_REPORTED_VERSIONS:
            raise InvalidArgument(f"a report has {len(request.windows)} versions, more than the limit of "
                                  f"{MAX_REPORTED_VERSIONS}")
        windows = dict[str, Figures]()
        for w in request.windows:
            if len(w.latency_counts) > N_BUCKETS or len(w.errors) > 16 or len(w.key) > 300:
                raise InvalidArgument(f"a version window has at most {N_BUCKETS} latency counts and 16 error "
                                      "classes")
            f = windows.setdefault(w.key, Figures())
            f.add(Figures(requests=w.requests, errors=dict(w.errors),
                          latency=[*w.latency_counts, *[0] * (N_BUCKETS - len(w.latency_counts))]))
        return rollout_pb2.ReportVersionStatsResponse(accepted=await self.service.report(request.region, windows))
