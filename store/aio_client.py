"""An asyncio client of the store for services that run on an event loop (the router): resolve, watch, list, and
the worker registry. Errors come back as the domain's typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import INSECURE, ClientSecurity, open_aio_channel
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.listing import AdapterSummary
from adapterfleet.store.resolved import Resolved
from adapterfleet.store.rollout_figures import Figures
from adapterfleet.store.workers import WorkerRecord, record_from_pb
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, rollout_pb2, rollout_pb2_grpc, store_pb2, store_pb2_grpc


class AsyncStoreClient:
    def __init__(self, address: str, *, timeout: float = 5.0, security: ClientSecurity = INSECURE,
                 region: str = ""):
        self.address = address
        self.region = region  # the caller's region, sent with Resolve (regional alias overrides of a rollout)
        self._channel = open_aio_channel(address, security)
        self._store = store_pb2_grpc.AdapterStoreStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryStub(self._channel)
        self._rollouts = rollout_pb2_grpc.RolloutsStub(self._channel)
        self._timeout = timeout

    async def close(self) -> None:
        await self._channel.close()

    async def resolve(self, ref: str, routing_key: str = "", *, direct: bool = False) -> Resolved:
        """``direct``: also ask for presigned URLs of the chosen version's files (a caller about to fetch it)."""
        try:
            r = await self._store.Resolve(store_pb2.ResolveRequest(ref=ref, routing_key=routing_key,
                                                                   region=self.region, direct=direct),
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

    async def revoked_tokens(self) -> tuple[list[str], str]:
        """(revoked token ids, the Watch cursor to follow from): what a RevocationFollower starts with."""
        try:
            r = await self._store.ListRevokedTokens(store_pb2.ListRevokedTokensRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        return list(r.token_ids), r.cursor

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

    async def report_version_stats(self, region: str, router: str, windows: dict[str, Figures]) -> int:
        """A router's per-version window (key -> figures) for rollout gates; returns how many the store kept."""
        report = rollout_pb2.VersionStatsReport(router=router, region=region, windows=[
            rollout_pb2.VersionWindow(key=k, requests=f.requests, errors=f.errors, latency_counts=f.latency)
            for k, f in windows.items()])
        try:
            return (await self._rollouts.ReportVersionStats(report, timeout=self._timeout)).accepted
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
