"""The Registry gRPC servicer (hosted by the store process): proto in, one domain call, proto out."""

from __future__ import annotations

import dataclasses

from adapterfleet.common import auth
from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.registry import RedisRegistry
from adapterfleet.store.workers import record_from_pb, record_to_pb
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, registry: RedisRegistry, announce_every: float = 1.0, max_adapters: int = 1 << 16):
        self.registry = registry
        self._every = announce_every
        self._max_adapters = max_adapters

    async def Announce(self, request, context):
        auth.require_worker(request.id)  # a worker token, for its own id only (trusted registry)
        if len(request.adapters) > self._max_adapters:
            raise InvalidArgument(f"WorkerInfo.adapters has {len(request.adapters)} entries, more than the limit of "
                                  f"{self._max_adapters}")
        # attributed by the registry, never by the announcer: the verified token's id ("" with auth off)
        record = dataclasses.replace(record_from_pb(request), announced_by=auth.announced_by())
        await self.registry.announce(record, request.ttl_seconds)
        return registry_pb2.AnnounceResponse(next_in_seconds=self._every)

    async def ListWorkers(self, request, context):
        auth.require_service(auth.SCOPES_ANY, "listing workers")
        return registry_pb2.ListWorkersResponse(
            workers=[record_to_pb(r) for r in await self.registry.workers(request.region)])
