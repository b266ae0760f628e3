"""A secondary region's store: reads from its own replicated state, writes forwarded to the primary.

Pushes (with the dedupe question before them), alias moves and deletes, yanks and garbage collection sent here go
to the primary and return the primary's answer, errors included, so clients can talk to their local store only.
Before it answers, a forwarded write waits (up to ``read_your_writes_s``) until the change has been replicated
here, so a client that pushes and then resolves through this store sees its version. While the primary cannot be
reached they fail UNAVAILABLE naming it; reads (resolve, list, fetch of replicated versions, watch) keep working.

A fetch copies the version's blobs from the primary first when this region's bucket lacks them (blob_copy.py:
verified against their sha256 before they are stored or served).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from adapterfleet.common.errors import NotFound
from adapterfleet.store.blob_copy import BlobCopier
from adapterfleet.store.blobs.base import BlobStore
from adapterfleet.store.config import StoreConfig
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.listing import GcReport
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.primary_client import PrimaryClient
from adapterfleet.store.push import PushHeader, PushResult
from adapterfleet.store.refs import validate_alias, validate_name
from adapterfleet.store.replication import Follower
from adapterfleet.store.service import AdapterStoreCore, FileChunk, Resolution, check_count
from adapterfleet.store.targets import Targets, check, encode

log = logging.getLogger("adapterfleet.store.replication")


class SecondaryStoreCore(AdapterStoreCore):
    def __init__(self, cfg: StoreConfig, blobs: BlobStore, index: RedisIndex, primary: PrimaryClient,
                 follower: Follower, copier: BlobCopier, rng: random.Random | None = None):
        super().__init__(cfg, blobs, index, rng)
        assert cfg.replica is not None, "a secondary store is configured with a ReplicaConfig"
        self.replica = cfg.replica
        self.primary = primary
        self.follower = follower
        self.copier = copier

    async def _replicated(self, what: str, check_fn: Callable[[], Awaitable[bool]]) -> None:
        if not await self.follower.wait_until(check_fn, self.replica.read_your_writes_s):
            log.info("%s is done on the primary but not yet replicated here after %gs", what,
                     self.replica.read_your_writes_s)

    # --- writes: forwarded ---
    async def push(self, header: PushHeader, chunks: AsyncIterator[FileChunk]) -> PushResult:
        result = await self.primary.push(header, chunks)
        m = result.manifest

        async def here() -> bool:
            return await self.index.version_of(m.name, m.digest) is not None

        await self._replicated(f"the push of {m.name}@{m.version}", here)
        self.stats.bytes_received += result.bytes_received
        self.stats.bytes_deduplicated += result.bytes_deduplicated
        return result

    async def missing_blobs(self, digests: list[str]) -> list[str]:
        """Asked of the primary: a push sent here is deduplicated against what the primary holds."""
        check_count("MissingBlobsRequest.sha256", len(digests), self.cfg.limits.max_digests)
        return await self.primary.missing_blobs(digests)

    async def set_alias(self, name: str, alias: str, targets: Targets, expect: Targets | str | None) -> Targets:
        validate_name(name)
        validate_alias(alias)
        targets = check(targets)
        await self.primary.set_alias(name, alias, targets, expect)

        async def here() -> bool:
            now = await self.index.alias(name, alias)
            return now is not None and encode(now) == encode(targets)

        await self._replicated(f"alias {name}@{alias}", here)
        return ()  # the primary answers with what it set, not what was there before

    async def delete_alias(self, name: str, alias: str, expect: Targets | str | None) -> None:
        validate_name(name)
        validate_alias(alias)
        await self.primary.delete_alias(name, alias, expect)

        async def here() -> bool:
            return await self.index.alias(name, alias) is None

        await self._replicated(f"deleting alias {name}@{alias}", here)

    async def yank(self, name: str, version: int, force: bool = False) -> Manifest:
        validate_name(name)
        manifest = await self.primary.yank(name, version, force)

        async def here() -> bool:
            return version in await self.index.yanked(name)

        await self._replicated(f"the yank of {name}@{version}", here)
        return manifest

    async def collect_garbage(self, dry_run: bool = False, min_age: float | None = None) -> GcReport:
        """The primary's garbage collection (this region's bucket holds only blobs of versions, which are never
        garbage while the version exists)."""
        return await self.primary.collect_garbage(dry_run, min_age)

    # --- reads: local, blobs copied on first fetch ---
    async def resolve(self, text: str, routing_key: str = "", region: str = "") -> Resolution:
        """From this region's replicated state. A miss the primary can answer (a change not replicated yet) waits
        for replication, up to ``read_your_writes_s``: this region never answers with state it has not installed."""
        try:
            return await super().resolve(text, routing_key, region)
        except NotFound:
            if not self.follower.state.connected or not await self.primary.resolves(text):
                raise

        async def here() -> bool:
            try:
                await AdapterStoreCore.resolve(self, text, routing_key)
            except NotFound:
                return False
            return True

        await self._replicated(f"{text} (found on the primary)", here)
        return await super().resolve(text, routing_key, region)

    async def fetch(self, text: str, *args, **kwargs) -> AsyncIterator:
        routing_key = kwargs.get("routing_key", args[3] if len(args) > 3 else "")
        manifest = (await self.resolve(text, routing_key)).manifest
        bad = await self.index.quarantine.members_if_reachable(f.sha256 for f in manifest.files)
        await self.copier.ensure(manifest, replace=bad)  # a copy found corrupt here is copied again, verified
        if bad:
            await self.index.quarantine.lift(bad)
        async for item in super().fetch(str(manifest.key), *args, **kwargs):
            yield item
