"""An asyncio client of the store for services that run on an event loop (the router): resolve, watch, list, and
the worker registry. Errors come back as the domain's typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.listing import AdapterSummary
from adapterfleet.store.resolved import Resolved
from adapterfleet.store.workers import WorkerRecord, record_from_pb
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, store_pb2, store_pb2_grpc


class AsyncStoreClient:
    def __init__(self, address: str, *, timeout: float = 5.0):
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._store = store_pb2_grpc.AdapterStoreStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryStub(self._channel)
        self._timeout = timeout

    async def close(self) -> None:
        await self._channel.close()

    async def resolve(self, ref: str, routing_key: str = "") -> Resolved:
        try:
            r = await self._store.Resolve(store_pb2.ResolveRequest(ref=ref, routing_key=routing_key),
                                          timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        return pc.resolution_from_pb(r)

    async def watch(self, cursor: str = "$") -> AsyncIterator[StoreEvent]:
        try:
            async for pb in self._store.Watch(store_pb2.WatchRequest(cursor=cursor)):
                yield pc.event_from_pb(pb)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None

    async def list_adapters(self, prefix: str = "") -> list[AdapterSummary]:
        try:
            r = await self._store.ListAdapters(store_pb2.ListAdaptersRequest(prefix=prefix), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        return [pc.summary_from_pb(a) for a in r.adapters]

    async def workers(self, region: str = "") -> list[WorkerRecord]:
        try:
            r = await self._registry.ListWorkers(registry_pb2.ListWorkersRequest(region=region),
                                                 timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        return [record_from_pb(w) for w in r.workers]
