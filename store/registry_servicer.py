"""The Registry gRPC servicer (hosted by the store process): proto in, one domain call, proto out."""

from __future__ import annotations

from adapterfleet.v1 import registry_pb2, registry_pb2_grpc
from adapterfleet.store.registry import RedisRegistry, WorkerRecord


def record_from_pb(pb: registry_pb2.WorkerInfo) -> WorkerRecord:
    return WorkerRecord(id=pb.id, address=pb.address, region=pb.region, capacity=pb.capacity, load=pb.load,
                        adapters={a.key: a.tier for a in pb.adapters}, fingerprint=pb.fingerprint,
                        base_model=pb.base_model, draining=pb.draining)


def record_to_pb(r: WorkerRecord) -> registry_pb2.WorkerInfo:
    return registry_pb2.WorkerInfo(
        id=r.id, address=r.address, region=r.region, capacity=r.capacity, load=r.load,
        adapters=[registry_pb2.ResidentAdapter(key=k, tier=t) for k, t in sorted(r.adapters.items())],
        fingerprint=r.fingerprint, base_model=r.base_model, draining=r.draining)


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, registry: RedisRegistry, announce_every: float = 1.0):
        self.registry = registry
        self._every = announce_every

    async def Announce(self, request, context):
        await self.registry.announce(record_from_pb(request), request.ttl_seconds)
        return registry_pb2.AnnounceResponse(next_in_seconds=self._every)

    async def ListWorkers(self, request, context):
        return registry_pb2.ListWorkersResponse(
            workers=[record_to_pb(r) for r in await self.registry.workers(request.region)])
