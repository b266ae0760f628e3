"""The store's gRPC servicer: proto in, one domain call, proto out. Every list in a request is counted against its
limit before it is converted, so an oversized one costs nothing but the refusal."""

from __future__ import annotations

from adapterfleet.common import auth
from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.push import PushHeader
from adapterfleet.store.revocations import RevocationIndex, check_token_id
from adapterfleet.store.service import AdapterStoreCore, FileChunk, check_count
from adapterfleet.store.status import status_to_pb
from adapterfleet.store.status_source import StatusSource
from adapterfleet.store.targets import MAX_TARGETS
from adapterfleet.v1 import store_pb2, store_pb2_grpc


def _expectation(request, field: str = "expect"):
    if request.HasField(field):
        check_count(f"{field}.targets", len(getattr(request, field).targets), MAX_TARGETS)
    return pc.expectation_from_pb(request, field)


class StoreServicer(store_pb2_grpc.AdapterStoreServicer):
    """Every call is authorized here (adapterfleet.common.auth: scopes and tenants) before the domain call."""

    def __init__(self, core: AdapterStoreCore, revocations: RevocationIndex | None = None,
                 authenticator: auth.Authenticator | None = None, status: StatusSource | None = None):
        self.core = core
        self._status = status
        self._revocations = revocations
        self._auth = authenticator

    async def Push(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("a push must start with a header message (name and files)")
        h = first.header
        auth.require(auth.PUSH, "pushing", h.name)
        if h.alias:  # as SetAlias: an alias is what callers serve, and a push's alias moves it unconditionally
            auth.require(auth.ADMIN, f"pointing alias {h.alias!r} at the pushed version", h.name)
        check_count("PushHeader.files", len(h.files), self.core.cfg.limits.max_files)
        identity = auth.current()
        tenant = auth.tenant_key(identity) if identity is not None and self._auth is not None else None
        if tenant is not None:
            self._auth.limiter.push(tenant, sum(f.size for f in h.files))
        header = PushHeader(name=h.name, alias=h.alias, base_model=pc.base_from_pb(h.base_model),
                            files=tuple(pc.files_from_pb(h.files)), parent=h.parent, signature=h.signature)

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
        auth.require(auth.PUSH, "asking which blobs a push must send")
        check_count("MissingBlobsRequest.sha256", len(request.sha256), self.core.cfg.limits.max_digests)
        return store_pb2.MissingBlobsResponse(sha256=await self.core.missing_blobs(list(request.sha256)))

    async def ReportCorrupt(self, request, context):
        auth.require((auth.READ, auth.SERVE, auth.WORKER), "reporting corrupt blobs")  # what a receiver fetched
        check_count("ReportCorruptRequest.sha256", len(request.sha256), self.core.cfg.limits.max_digests)
        return store_pb2.ReportCorruptResponse(quarantined=await self.core.report_corrupt(list(request.sha256)))

    async def Fetch(self, request, context):
        auth.require(auth.READ, "fetching", auth.ref_name(request.ref))
        async for item in self.core.fetch(request.ref, request.resume_file, request.resume_offset,
                                          request.chunk_size, request.routing_key, request.direct):
            if isinstance(item, FileChunk):
                yield store_pb2.FetchResponse(chunk=store_pb2.Chunk(file=item.file, offset=item.offset,
                                                                    data=item.data))
            elif isinstance(item, tuple):  # presigned URLs instead of the bytes
                yield store_pb2.FetchResponse(urls=_urls_to_pb(item))
            else:
                yield store_pb2.FetchResponse(manifest=pc.manifest_to_pb(item))

    async def Resolve(self, request, context):
        auth.require((auth.READ, auth.SERVE), "resolving", auth.ref_name(request.ref))
        if request.direct:  # URLs hand out the bytes: what a Fetch needs
            auth.require(auth.READ, "resolving with presigned URLs (direct)", auth.ref_name(request.ref))
        r = await self.core.resolve(request.ref, request.routing_key, request.region)
        out = store_pb2.Resolution(manifest=pc.manifest_to_pb(r.manifest), key=str(r.manifest.key),
                                   alias=r.alias, alias_targets=pc.targets_to_pb(r.alias_targets),
                                   targets=pc.live_targets_to_pb(r.targets))
        if request.direct and (urls := await self.core.direct_urls(r)) is not None:
            out.urls.CopyFrom(_urls_to_pb(urls))
        return out

    async def ListAdapters(self, request, context):
        auth.require(auth.READ, "listing adapters")
        return store_pb2.ListAdaptersResponse(
            adapters=[pc.summary_to_pb(a) for a in await self.core.list_adapters(request.prefix)
                      if auth.visible(a.name)])

    async def ListVersions(self, request, context):
        auth.require(auth.READ, "listing versions", request.name)
        versions, aliases = await self.core.list_versions(request.name)
        return store_pb2.ListVersionsResponse(
            versions=[pc.manifest_to_pb(m) for m in versions],
            aliases=[pc.alias_to_pb(request.name, k, t) for k, t in sorted(aliases.items())])

    async def SetAlias(self, request, context):
        auth.require(auth.ADMIN, "moving an alias", request.name)
        check_count("SetAliasRequest.targets", len(request.targets), MAX_TARGETS)
        targets = pc.targets_from_pb(request.targets)
        await self.core.set_alias(request.name, request.alias, targets, _expectation(request))
        return pc.alias_to_pb(request.name, request.alias, targets)

    async def DeleteAlias(self, request, context):
        auth.require(auth.ADMIN, "deleting an alias", request.name)
        await self.core.delete_alias(request.name, request.alias, _expectation(request))
        return store_pb2.DeleteAliasResponse()

    async def YankVersion(self, request, context):
        auth.require(auth.ADMIN, "yanking a version", request.name)
        return pc.manifest_to_pb(await self.core.yank(request.name, request.version, request.force))

    async def CollectGarbage(self, request, context):
        auth.require_service(auth.ADMIN, "garbage collection")
        min_age = request.min_age_seconds if request.HasField("min_age_seconds") else None
        return pc.gc_report_to_pb(await self.core.collect_garbage(request.dry_run, min_age))

    async def Watch(self, request, context):
        auth.require(auth.READ, "watching events", request.name or None)
        service = auth.is_service()
        async for event in self.core.watch(request.cursor, request.name):
            if (event.name and auth.visible(event.name)) or (not event.name and service):
                yield pc.event_to_pb(event)

    async def Status(self, request, context):
        auth.require(auth.SCOPES_ANY, "reading the store's status")
        if self._status is None:
            raise InvalidArgument("this store reports no status")
        return status_to_pb(await self._status.report(request.since))

    async def RevokeToken(self, request, context):
        auth.require_service(auth.ADMIN, "revoking a token")
        cursor = await self._revocation_index().revoke(check_token_id(request.token_id), request.expires)
        if self._auth is not None:
            self._auth.revocations.add(request.token_id)  # this store refuses it at once; the others follow
        return store_pb2.RevokeTokenResponse(cursor=cursor)

    async def ListRevokedTokens(self, request, context):
        auth.require_service(auth.SCOPES_ANY, "listing revoked tokens")
        ids, cursor = await self._revocation_index().revoked()
        return store_pb2.ListRevokedTokensResponse(token_ids=ids, cursor=cursor)

    def _revocation_index(self) -> RevocationIndex:
        if self._revocations is None:
            raise InvalidArgument("this store keeps no revocations")
        return self._revocations


def _urls_to_pb(urls) -> store_pb2.BlobUrls:
    return store_pb2.BlobUrls(files=[store_pb2.BlobUrl(file=u.file, url=u.url, expires_in_s=u.expires_in_s)
                                     for u in urls])
