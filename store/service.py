"""The store's domain API: what the gRPC servicer calls. No generated stubs here."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from adapterfleet.common.aio import Prefetch
from adapterfleet.common.errors import ChecksumMismatch, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from adapterfleet.store.blob_urls import BlobUrl
from adapterfleet.store.blobs.base import BlobStore
from adapterfleet.store.config import StoreConfig
from adapterfleet.store.events import StoreEvent, check_cursor
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.listing import AdapterSummary, GcReport
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.push import PushHeader, PushResult, PushSession
from adapterfleet.store.refs import MAX_NAME_CHARS, Ref, show, validate_alias, validate_hex_digest, validate_name
from adapterfleet.store.rollout_record import override_alias
from adapterfleet.store.targets import LiveTarget, Targets, check, choose
from adapterfleet.store.validator import Validator

log = logging.getLogger("adapterfleet.store")


def check_count(field: str, n: int, limit: int) -> None:
    """Refuse a list in a request that is longer than its limit, before any work is done on it."""
    if n > limit:
        raise InvalidArgument(f"{field} has {n} entries, more than the limit of {limit}")


@dataclass(frozen=True)
class Resolution:
    manifest: Manifest                  # the version chosen for this request
    targets: tuple[LiveTarget, ...]     # every live target (one for a version, digest or latest ref)
    alias: str = ""
    alias_targets: Targets = ()         # the alias as set, yanked targets included
    # no blob at all was quarantined when the manifest was read (same round trip): its blobs need no check then
    nothing_quarantined: bool = False


DirectUrls = tuple[BlobUrl, ...]  # a fetch's answer in place of the bytes: where to GET each file


@dataclass(frozen=True)
class FileChunk:
    file: str
    offset: int
    data: bytes


@dataclass
class StoreStats:
    bytes_received: int = 0      # pushed file bytes that crossed the wire
    bytes_deduplicated: int = 0  # pushed file bytes the store already held
    bytes_sent: int = 0          # fetched file bytes
    versions_created: int = 0
    pushes_unchanged: int = 0    # re-pushes of content the name's latest version already has
    blobs_quarantined: int = 0   # reported blobs whose stored bytes did not hash to their digest
    urls_issued: int = 0         # fetched files answered with a presigned URL (their bytes came straight from S3)


class AdapterStoreCore:
    def __init__(self, cfg: StoreConfig, blobs: BlobStore, index: RedisIndex, rng: random.Random | None = None):
        self.cfg = cfg
        self.blobs = blobs
        self.index = index
        self._rng = rng or random.Random()
        self.stats = StoreStats()
        self._sweeps: set[asyncio.Future] = set()  # garbage collections under way, held until they end
        # Work that may be slow gets threads (and a process) of its own, so that it queues behind itself and never
        # in front of other requests' I/O in the loop's default executor (all start on first use).
        self._lookups = ThreadPoolExecutor(cfg.blob_lookups, thread_name_prefix="store-blob-lookup")
        self.validator = Validator(cfg.limits, cfg.validators, cfg.validator_processes)

    def close(self) -> None:
        """Stop the core's threads and processes (after the server stopped taking calls)."""
        self._lookups.shutdown(wait=False, cancel_futures=True)
        self.validator.close()

    # --- push -----------------------------------------------------------------------------------------------------
    async def push(self, header: PushHeader, chunks: AsyncIterator[FileChunk]) -> PushResult:
        session = PushSession(header, self.blobs, self.index, self.cfg, self.validator)
        await session.start()
        try:
            async for chunk in chunks:
                await session.feed(chunk.file, chunk.offset, chunk.data)
            result = await session.finish()
        finally:
            await session.abort()  # after a commit this only releases the (already released) leases
        self.stats.bytes_received += result.bytes_received
        self.stats.bytes_deduplicated += result.bytes_deduplicated
        if result.created:
            self.stats.versions_created += 1
        else:
            self.stats.pushes_unchanged += 1
        return result

    async def missing_blobs(self, digests: list[str]) -> list[str]:
        """The digests whose blobs the backend (S3, never a cache) does not have, in the order asked."""
        check_count("MissingBlobsRequest.sha256", len(digests), self.cfg.limits.max_digests)
        for d in digests:
            validate_hex_digest(d)
        unique = list(dict.fromkeys(digests))
        loop = asyncio.get_running_loop()
        present = await asyncio.gather(*(loop.run_in_executor(self._lookups, self.blobs.exists, d) for d in unique))
        have = {d for d, ok in zip(unique, present, strict=True) if ok}
        # held, but not the right bytes: a quarantined blob must be sent again
        have -= await self.index.quarantine.members_if_reachable(unique)
        return [d for d in unique if d not in have]

    async def report_corrupt(self, digests: list[str]) -> list[str]:
        """A receiver found blobs that do not hash to their digests. Re-read each from the backend (a report is a
        hint, never trusted) and quarantine those that really are bad; returns the quarantined ones."""
        check_count("ReportCorruptRequest.sha256", len(digests), self.cfg.limits.max_digests)
        for d in digests:
            validate_hex_digest(d)
        quarantine = self.index.quarantine
        asked = [d for d in dict.fromkeys(digests) if not quarantine.recently_good(d)]
        # only blobs a version refers to: a digest nothing serves is no receiver's, and quarantining made-up ones
        # would grow the set for good and cost every Resolve its no-quarantine shortcut
        referenced = await self.index.referenced(asked) if asked else []
        asked = [d for d, ref in zip(asked, referenced, strict=True) if ref]
        loop = asyncio.get_running_loop()
        intact = await asyncio.gather(*(loop.run_in_executor(self._lookups, self.blobs.holds_intact, d)
                                        for d in asked))
        bad = []
        for d, ok in zip(asked, intact, strict=True):
            if ok:
                quarantine.found_good(d)
            else:
                await quarantine.add(d)
                bad.append(d)
                log.warning("blob sha256:%s does not hash to its digest: quarantined until a push sends good bytes", d)
        self.stats.blobs_quarantined += len(bad)
        return sorted(await quarantine.members(digests))

    # --- resolve --------------------------------------------------------------------------------------------------
    async def resolve(self, text: str, routing_key: str = "", region: str = "") -> Resolution:
        """One Redis round trip for a digest or a bare name (the latest version), two for a version number or an
        alias: what the ref points at, then that version's manifest (three for an alias asked from a ``region``: its
        regional override, while a rollout by region moves one, comes first)."""
        ref = Ref.parse(text)
        if ref.digest is not None:
            return self._one(*await self.index.manifest_to_serve(ref.name, ref.digest))
        if ref.version is not None:
            manifest, clean = await self._by_version(ref.name, ref.version)
            if manifest.yanked:
                raise NotFound(f"{ref} is yanked; fetch it by digest if you really need it")
            return self._one(manifest, clean)
        if ref.alias is None:  # the latest version: one round trip
            count, latest = await self.index.latest_to_serve(ref.name)
            if latest is None:
                if count:
                    raise NotFound(f"every version of {ref.name} is yanked; push a new one or fetch one by digest")
                raise NotFound(f"adapter {ref.name} does not exist; `adapterfleet ls` lists adapters")
            return self._one(*latest)
        versions, yanked, targets = await self.index.state(ref.name, ref.alias)
        if region and targets is not None:
            targets = await self.index.alias(ref.name, override_alias(ref.alias, region)) or targets
        if targets is None:
            raise NotFound(f"alias {ref} does not exist; `adapterfleet ls {ref.name}` lists its aliases")
        live = tuple(LiveTarget(v, w, f"{ref.name}@{versions[v]}")
                     for v, w in targets if v not in yanked and v in versions)
        if not live:
            raise FailedPrecondition(f"every version alias {ref} points at is yanked; move the alias")
        chosen = choose(live, routing_key, self._rng)
        manifest, clean = await self.index.manifest_to_serve(ref.name, versions[chosen.version])
        return Resolution(manifest, live, ref.alias, targets, clean)

    @staticmethod
    def _one(manifest: Manifest, nothing_quarantined: bool = False) -> Resolution:
        return Resolution(manifest, (LiveTarget(manifest.version, 100, str(manifest.key)),),
                          nothing_quarantined=nothing_quarantined)

    async def _by_version(self, name: str, version: int) -> tuple[Manifest, bool]:
        digest = await self.index.digest_of(name, version)
        if digest is None:
            raise NotFound(f"{name}@{version} does not exist")
        return await self.index.manifest_to_serve(name, digest)

    # --- fetch ----------------------------------------------------------------------------------------------------
    async def fetch(self, text: str, resume_file: str = "", resume_offset: int = 0, chunk_size: int = 0,
                    routing_key: str = "", direct: bool = False) -> AsyncIterator[Manifest | FileChunk | DirectUrls]:
        """The manifest, then the files' bytes; or, when ``direct`` and the backend can presign, the manifest and
        one presigned URL per file (the client GETs and verifies them itself)."""
        resolved = await self.resolve(text, routing_key)
        manifest = resolved.manifest
        bad = await self._quarantined(resolved)
        if bad:
            names = sorted(f.name for f in manifest.files if f.sha256 in bad)
            raise ChecksumMismatch(f"{manifest.key}: the stored bytes of {', '.join(names)} do not hash to their "
                                   "digest (quarantined): re-push the adapter from a good copy "
                                   f"(adapterfleet push DIR --name {manifest.name})")
        chunk_size = min(chunk_size or self.cfg.chunk_size, 4 << 20)
        names = [f.name for f in manifest.files]
        if resume_file and resume_file not in names:
            raise InvalidArgument(f"cannot resume from {resume_file!r}: {manifest.key} has files {names}")
        start = names.index(resume_file) if resume_file else 0
        if resume_file and resume_offset > manifest.files[start].size:
            raise InvalidArgument(f"resume offset {resume_offset} is past the end of {resume_file}")
        yield manifest
        entries = manifest.files[start:]
        if direct and (urls := self._presign(entries)) is not None:
            yield urls
            return
        offsets = [resume_offset] + [0] * (len(entries) - 1)
        # every file's read starts now, so small files' round trips overlap the first file's stream
        readers = [Prefetch(self.blobs.read(e.sha256, off, chunk_size))
                   for e, off in zip(entries, offsets, strict=True)]
        try:
            for entry, offset, reader in zip(entries, offsets, readers, strict=True):
                async for data in reader:
                    yield FileChunk(entry.name, offset, data)
                    offset += len(data)
                    self.stats.bytes_sent += len(data)
        finally:
            for reader in readers:
                reader.close()

    async def direct_urls(self, resolved: Resolution) -> DirectUrls | None:
        """Presigned URLs for every file of the version ``resolved`` chose (a Resolve that asked for them), or None:
        the backend cannot presign, or a file is quarantined (the caller's Fetch then says so, with what to do)."""
        if await self._quarantined(resolved):
            return None
        return self._presign(resolved.manifest.files)

    async def _quarantined(self, resolved: Resolution) -> set[str]:
        """The quarantined digests among the chosen version's files: none without a round trip when the quarantine
        was empty as the manifest was read (a cold load's Resolve makes one round trip fewer)."""
        if resolved.nothing_quarantined:
            return set()
        return await self.index.quarantine.members_if_reachable(f.sha256 for f in resolved.manifest.files)

    def _presign(self, entries) -> DirectUrls | None:
        """One URL per file, or None when the backend gives none (every file streams then). Local signing only."""
        urls = []
        for entry in entries:
            signed = self.blobs.presign(entry.sha256)
            if signed is None:
                return None
            urls.append(BlobUrl(entry.name, *signed))
        self.stats.urls_issued += len(urls)
        return tuple(urls)

    # --- listing ----------------------------------------------------------------------------------------------------
    async def list_adapters(self, prefix: str = "") -> list[AdapterSummary]:
        if len(prefix) > MAX_NAME_CHARS:
            raise InvalidArgument(f"invalid prefix {show(prefix)}: longer than a name ({MAX_NAME_CHARS} characters)")
        names = [n for n in await self.index.names() if n.startswith(prefix)]
        out = []
        for name, (versions, yanked, aliases) in zip(names, await self.index.summaries(names), strict=True):
            live = [v for v in versions if v not in yanked]
            out.append(AdapterSummary(name, max(live, default=0), len(versions), aliases))
        return out

    async def list_versions(self, name: str) -> tuple[list[Manifest], dict[str, Targets]]:
        validate_name(name)
        versions = await self.index.versions(name)
        if not versions:
            raise NotFound(f"adapter {name} does not exist; `adapterfleet ls` lists adapters")
        manifests = await self.index.manifests(name, [versions[v] for v in sorted(versions)])
        return manifests, await self.index.aliases(name)

    # --- aliases and yanks ------------------------------------------------------------------------------------------
    async def set_alias(self, name: str, alias: str, targets: Targets, expect: Targets | str | None) -> Targets:
        validate_name(name)
        validate_alias(alias)
        return await self.index.set_alias(name, alias, check(targets), expect)

    async def delete_alias(self, name: str, alias: str, expect: Targets | str | None) -> None:
        validate_name(name)
        validate_alias(alias)
        await self.index.set_alias(name, alias, (), expect)

    async def yank(self, name: str, version: int, force: bool = False) -> Manifest:
        validate_name(name)
        await self.index.yank(name, version, force)
        return (await self._by_version(name, version))[0]

    # --- garbage collection -------------------------------------------------------------------------------------------
    async def collect_garbage(self, dry_run: bool = False, min_age: float | None = None) -> GcReport:
        """Delete blobs no version refers to and no push holds, older than the grace period.

        Safe against concurrent pushes: a push leases its blobs before it looks at or writes them, and marking a
        blob doomed is atomic with checking its references and leases; a push that finds a blob doomed waits.
        """
        cutoff = time.time() - (self.cfg.gc_grace_seconds if min_age is None else min_age)
        infos = [b for b in await asyncio.to_thread(lambda: list(self.blobs.list())) if b.modified <= cutoff]
        refs = await self.index.referenced([b.sha256 for b in infos])
        candidates = [b for b, ref in zip(infos, refs, strict=True) if not ref]
        sizes = {b.sha256: b.size for b in candidates}
        kept_referenced = sum(refs)
        if dry_run:
            return GcReport(sorted(sizes), sum(sizes.values()), kept_referenced, 0, 0)
        sweep = asyncio.ensure_future(self._sweep([b.sha256 for b in candidates]))
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._sweeps.discard)
        doomed = await asyncio.shield(sweep)  # a caller that goes away does not stop it halfway
        aborted = await asyncio.to_thread(self.blobs.abort_stale_uploads, cutoff)
        return GcReport(sorted(doomed), sum(sizes[s] for s in doomed), kept_referenced,
                        len(candidates) - len(doomed), aborted)

    async def _sweep(self, candidates: list[str]) -> list[str]:
        """Mark, delete, unmark: a task of its own. Cancelled with its caller (a CollectGarbage whose deadline
        passed), it would unmark a blob while that blob's delete still ran in its thread, and a push could take the
        blob up meanwhile and then lose it; or leave marks that hold pushes of those blobs back for minutes."""
        doomed: list[str] = []
        try:
            for i in range(0, len(candidates), 500):
                doomed += await self.index.gc_mark(candidates[i:i + 500])
            for sha in doomed:
                await asyncio.to_thread(self.blobs.delete, sha)
        finally:
            await self.index.gc_unmark(doomed)
        return doomed

    # --- events ---------------------------------------------------------------------------------------------------
    async def watch(self, cursor: str = "", name: str = "", block_ms: int = 5000) -> AsyncIterator[StoreEvent]:
        """Events after ``cursor``, forever. Through a Redis outage (a restart) the stream waits and then resumes
        from its cursor, missing nothing Redis kept; an outage longer than ``watch_outage_s`` ends it UNAVAILABLE."""
        check_cursor(cursor)
        if name:
            validate_name(name, "watch name")
        if cursor in ("", "$"):
            cursor = await self.index.last_event_id()
        down_since: float | None = None
        while True:
            try:
                events = await self.index.read_events(cursor, block_ms)
            except Unavailable:
                now = time.monotonic()
                down_since = down_since if down_since is not None else now
                if now - down_since >= self.cfg.watch_outage_s:
                    raise
                await asyncio.sleep(min(0.5, self.cfg.watch_outage_s / 10))
                continue
            down_since = None
            for event in events:
                cursor = event.cursor
                if not name or event.name == name:
                    yield event

