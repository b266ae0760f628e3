"""A secondary store's asyncio client of its primary: what replication reads (status, the event stream, manifests,
listings, blob bytes) and what forwarding sends (pushes, alias moves, yanks, GC), raw protos in and out.

Errors: a status the primary itself answered comes back as its typed error, message kept; a primary that cannot be
reached (no answer at all) is Unavailable naming it, with what still works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from adapterfleet.common import auth
from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.errors import AdapterFleetError, Unavailable
from adapterfleet.common.grpc_errors import ERROR_TYPE_KEY, error_from_rpc
from adapterfleet.common.security import INSECURE, ClientSecurity, open_aio_channel
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.listing import GcReport
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.push import PushHeader, PushResult
from adapterfleet.store.service import FileChunk
from adapterfleet.store.status import StoreStatusReport, status_from_pb
from adapterfleet.store.targets import Targets
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc

# a primary back from an outage is found within ~2 s (gRPC's reconnect backoff would otherwise grow to 120 s)
PRIMARY_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 250),
                           ("grpc.max_reconnect_backoff_ms", 2000)]


class PrimaryClient:
    def __init__(self, address: str, security: ClientSecurity = INSECURE, *, timeout: float = 30.0):
        self.address = address
        self._security = security
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub_: store_pb2_grpc.AdapterStoreStub | None = None

    @property
    def stub(self) -> store_pb2_grpc.AdapterStoreStub:
        """Opened on first use (on the loop that uses it), never in the constructor."""
        if self._stub_ is None:
            self._channel = open_aio_channel(self.address, self._security, PRIMARY_CHANNEL_OPTIONS)
            self._stub_ = store_pb2_grpc.AdapterStoreStub(self._channel)
        return self._stub_

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def error(self, err: grpc.RpcError, doing: str) -> AdapterFleetError:
        """The primary's own answer as its typed error; no answer at all as Unavailable naming the primary."""
        trailing = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
        code = err.code()
        if ERROR_TYPE_KEY not in trailing and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                                       grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
            return Unavailable(
                f"the primary store at {self.address} is unreachable ({code.name.lower()}: {err.details()}), so "
                f"{doing} cannot be done now: writes go to the primary; retry when it is back (reads keep working "
                "from this region's replicated state)")
        return error_from_rpc(err)

    async def unary(self, method: str, request, doing: str, timeout: float | None = None, *, forward: bool = False):
        """``forward``: a caller's write, sent with the caller's own token (the primary authorizes the caller)."""
        metadata = auth.forward_metadata() if forward else ()
        try:
            return await getattr(self.stub, method)(request, timeout=timeout or self._timeout, metadata=metadata)
        except grpc.RpcError as err:
            raise self.error(err, doing) from None

    # --- what replication reads -------------------------------------------------------------------------------------
    async def status(self, since: str = "") -> StoreStatusReport:
        return status_from_pb(await self.unary("Status", store_pb2.StatusRequest(since=since), "a status check",
                                               timeout=5.0))

    async def watch(self, cursor: str) -> AsyncIterator[StoreEvent]:
        try:
            async for pb in self.stub.Watch(store_pb2.WatchRequest(cursor=cursor)):
                yield pc.event_from_pb(pb)
        except grpc.RpcError as err:
            raise self.error(err, "following its event stream") from None

    async def manifest(self, name: str, digest: str) -> Manifest:
        r = await self.unary("Resolve", store_pb2.ResolveRequest(ref=f"{name}@{digest}"), "reading a manifest")
        return pc.manifest_from_pb(r.manifest)

    async def resolves(self, ref: str) -> bool:
        """Whether the primary resolves ``ref`` (False also when it cannot be asked)."""
        try:
            await self.unary("Resolve", store_pb2.ResolveRequest(ref=ref), "a resolve", timeout=2.0)
        except AdapterFleetError:
            return False
        return True

    async def names(self) -> list[str]:
        r = await self.unary("ListAdapters", store_pb2.ListAdaptersRequest(), "listing adapters")
        return [a.name for a in r.adapters]

    async def versions(self, name: str) -> tuple[list[Manifest], dict[str, Targets]]:
        r = await self.unary("ListVersions", store_pb2.ListVersionsRequest(name=name), "listing versions")
        return ([pc.manifest_from_pb(m) for m in r.versions],
                {a.alias: pc.targets_from_pb(a.targets) for a in r.aliases})

    async def file_bytes(self, key: str, file: str, offset: int = 0) -> AsyncIterator[bytes]:
        """The bytes of one file of version ``key`` ("name@sha256:..."), from ``offset`` (unverified: the caller
        hashes them)."""
        call = self.stub.Fetch(store_pb2.FetchRequest(ref=key, resume_file=file, resume_offset=offset))
        try:
            async for msg in call:
                if msg.HasField("chunk"):
                    if msg.chunk.file != file:
                        break
                    yield msg.chunk.data
        except grpc.RpcError as err:
            raise self.error(err, f"copying {file} of {key}") from None
        finally:
            call.cancel()

    # --- what forwarding sends ----------------------------------------------------------------------------------------
    async def push(self, header: PushHeader, chunks: AsyncIterator[FileChunk]) -> PushResult:
        pb = store_pb2.PushHeader(name=header.name, alias=header.alias, parent=header.parent,
                                  base_model=pc.base_to_pb(header.base_model), signature=header.signature,
                                  files=[common_pb2.FileEntry(name=f.name, size=f.size, sha256=f.sha256)
                                         for f in header.files])

        async def requests():
            yield store_pb2.PushRequest(header=pb)
            async for c in chunks:
                yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file=c.file, offset=c.offset, data=c.data))

        try:
            out = await self.stub.Push(requests(), metadata=auth.forward_metadata())
        except grpc.RpcError as err:
            raise self.error(err, f"the push of {header.name}") from None
        return PushResult(pc.manifest_from_pb(out.manifest), out.created, out.bytes_received, out.bytes_deduplicated)

    async def missing_blobs(self, digests: list[str]) -> list[str]:
        r = await self.unary("MissingBlobs", store_pb2.MissingBlobsRequest(sha256=digests), "a push", forward=True)
        return list(r.sha256)

    async def set_alias(self, name: str, alias: str, targets: Targets, expect: Targets | str | None) -> None:
        request = store_pb2.SetAliasRequest(name=name, alias=alias, targets=pc.targets_to_pb(targets))
        if (exp := pc.expectation_to_pb(expect)) is not None:
            request.expect.CopyFrom(exp)
        await self.unary("SetAlias", request, f"moving alias {name}@{alias}", forward=True)

    async def delete_alias(self, name: str, alias: str, expect: Targets | str | None) -> None:
        request = store_pb2.DeleteAliasRequest(name=name, alias=alias)
        if (exp := pc.expectation_to_pb(expect)) is not None:
            request.expect.CopyFrom(exp)
        await self.unary("DeleteAlias", request, f"deleting alias {name}@{alias}", forward=True)

    async def yank(self, name: str, version: int, force: bool) -> Manifest:
        r = await self.unary("YankVersion", store_pb2.YankVersionRequest(name=name, version=version, force=force),
                             f"yanking {name}@{version}", forward=True)
        return pc.manifest_from_pb(r)

    async def collect_garbage(self, dry_run: bool, min_age: float | None) -> GcReport:
        request = store_pb2.CollectGarbageRequest(dry_run=dry_run)
        if min_age is not None:
            request.min_age_seconds = min_age
        return pc.gc_report_from_pb(await self.unary("CollectGarbage", request, "garbage collection",
                                                     timeout=max(self._timeout, 600.0), forward=True))
