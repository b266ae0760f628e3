"""The store's gRPC servicer: proto in, one domain call, proto out. Every list in a request is counted against its
limit before it is converted, so an oversized one costs nothing but the refusal."""

from __future__ import annotations

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.push import PushHeader
from adapterfleet.store.service import AdapterStoreCore, FileChunk, check_count
from adapterfleet.store.targets import MAX_TARGETS
from adapterfleet.v1 import store_pb2, store_pb2_grpc


def _expectation(request, field: str = "expect"):
    if request.HasField(field):
        check_count(f"{field}.targets", len(getattr(request, field).targets), MAX_TARGETS)
    return pc.expectation_from_pb(request, field)


class StoreServicer(store_pb2_grpc.AdapterStoreServicer):
    def __init__(self, core: AdapterStoreCore):
        self.core = core

    async def Push(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("a push must start with a header message (name and files)")
        h = first.header
        check_count("PushHeader.files", len(h.files), self.core.cfg.limits.max_files)
        header = PushHeader(name=h.name, alias=h.alias, base_model=pc.base_from_pb(h.base_model),
                            files=tuple(pc.files_from_pb(h.files)), parent=h.parent)

        async def chunks():
            async for msg in request_iterator:
                if not msg.HasField("chunk"):
                    raise InvalidArgument("only one header per push; the rest must be chunks")
                yield FileChunk(msg.chunk.file, msg.chunk.offset, msg.chunk.data)

        result = await self.core.push(header, chunks())
        return store_pb2.PushResponse(manifest=pc.manifest_to_pb(result.manifest), created=result.created,
                                      bytes_received=result.bytes_received,
                                      bytes_deduplicated=result.bytes_deduplicated)

    async def MissingBlobs(self, request, context):
        check_count("MissingBlobsRequest.sha256", len(request.sha256), self.core.cfg.limits.max_digests)
        return store_pb2.MissingBlobsResponse(sha256=await self.core.missing_blobs(list(request.sha256)))

    async def ReportCorrupt(self, request, context):
        check_count("ReportCorruptRequest.sha256", len(request.sha256), self.core.cfg.limits.max_digests)
        return store_pb2.ReportCorruptResponse(quarantined=await self.core.report_corrupt(list(request.sha256)))

    async def Fetch(self, request, context):
        async for item in self.core.fetch(request.ref, request.resume_file, request.resume_offset,
                                          request.chunk_size, request.routing_key):
            if isinstance(item, FileChunk):
                yield store_pb2.FetchResponse(chunk=store_pb2.Chunk(file=item.file, offset=item.offset,
                                                                    data=item.data))
            else:
                yield store_pb2.FetchResponse(manifest=pc.manifest_to_pb(item))

    async def Resolve(self, request, context):
        r = await self.core.resolve(request.ref, request.routing_key)
        return store_pb2.Resolution(manifest=pc.manifest_to_pb(r.manifest), key=str(r.manifest.key),
                                    alias=r.alias, alias_targets=pc.targets_to_pb(r.alias_targets),
                                    targets=pc.live_targets_to_pb(r.targets))

    async def ListAdapters(self, request, context):
        return store_pb2.ListAdaptersResponse(
            adapters=[pc.summary_to_pb(a) for a in await self.core.list_adapters(request.prefix)])

    async def ListVersions(self, request, context):
        versions, aliases = await self.core.list_versions(request.name)
        return store_pb2.ListVersionsResponse(
            versions=[pc.manifest_to_pb(m) for m in versions],
            aliases=[pc.alias_to_pb(request.name, k, t) for k, t in sorted(aliases.items())])

    async def SetAlias(self, request, context):
        check_count("SetAliasRequest.targets", len(request.targets), MAX_TARGETS)
        targets = pc.targets_from_pb(request.targets)
        await self.core.set_alias(request.name, request.alias, targets, _expectation(request))
        return pc.alias_to_pb(request.name, request.alias, targets)

    async def DeleteAlias(self, request, context):
        await self.core.delete_alias(request.name, request.alias, _expectation(request))
        return store_pb2.DeleteAliasResponse()

    async def YankVersion(self, request, context):
        return pc.manifest_to_pb(await self.core.yank(request.name, request.version, request.force))

    async def CollectGarbage(self, request, context):
        min_age = request.min_age_seconds if request.HasField("min_age_seconds") else None
        return pc.gc_report_to_pb(await self.core.collect_garbage(request.dry_run, min_age))

    async def Watch(self, request, context):
        async for event in self.core.watch(request.cursor, request.name):
            yield pc.event_to_pb(event)
