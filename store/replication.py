"""The follower: a secondary region's store replicating its primary.

It reads the primary's Watch stream from the cursor persisted in this region's Redis and installs each change as
the primary made it (replica_index.py: the same version numbers, digests, alias targets with their weights, and
yanks), each atomically with the cursor and a local event, so this region's routers and workers watch their own
store as usual. A pushed version's manifest is read from the primary and must hash to the event's digest.

After a disconnection it resumes from its cursor: no gap (the cursor moves only with a change), no duplicate (an
event at or before the cursor is skipped). When the primary's stream was trimmed past the cursor (or the primary's
stream is behind it: its Redis was replaced), some changes can no longer be read one by one, so it resynchronises
completely: every adapter's versions, yanks and aliases as the primary lists them, then follows from the stream's
end as it was before the listing (changes made meanwhile are replayed, and replays are no-ops). It logs that, counts
it, and says why in Status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from adapterfleet.common.aio import wait_event
from adapterfleet.common.errors import AdapterFleetError, ChecksumMismatch, Unavailable
from adapterfleet.store.blob_copy import BlobCopier
from adapterfleet.store.config import ReplicaConfig
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.primary_client import PrimaryClient
from adapterfleet.store.replica_index import ZERO, ReplicaIndex, id_key
from adapterfleet.store.status import StoreStatusReport

log = logging.getLogger("adapterfleet.store.replication")
REVOCATION_KEEP_S = 366 * 86400.0  # a replicated revocation is kept this long (the event carries no expiry)
RETRY_REFUSED_S = 60.0  # an eager copy the primary's bytes failed is tried again after this long


@dataclass
class ReplicationState:
    """What Status and the metrics report (updated by the follower as it goes)."""

    connected: bool = False
    cursor: str = ZERO
    lag_events: int = 0
    lag_seconds: float = 0.0
    blobs_pending: int = 0
    resyncs: int = 0
    events_applied: int = 0
    last_error: str = ""
    last_resync: str = ""
    checked_at: float = 0.0
    caught_up_at: float = 0.0  # when it last knew it had every primary event


class Follower:
    def __init__(self, cfg: ReplicaConfig, primary: PrimaryClient, index: ReplicaIndex, copier: BlobCopier,
                 manifest_of: Callable[[str, str], Awaitable[Manifest]], clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.primary = primary
        self.index = index
        self.copier = copier
        self._manifest_of = manifest_of  # (name, digest) -> this region's manifest (the eager copier's lookup)
        self._clock = clock
        self.state = ReplicationState()
        self._tasks: list[asyncio.Task] = []
        self._applied: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._refused: dict[str, float] = {}

    # --- lifecycle ---
    def start(self) -> None:
        self._applied, self._wake = asyncio.Event(), asyncio.Event()
        self.state.caught_up_at = self._clock()
        loops = [self._follow(), self._measure()] + ([self._pending()] if self.cfg.replicate == "eager" else [])
        self._tasks = [asyncio.ensure_future(t) for t in loops]

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks), []
        for task in tasks:
            task.cancel()
        if tasks:  # not wait_for: a task whose thread is stuck cannot honour its cancellation at once
            await asyncio.wait(tasks, timeout=5.0)

    def report(self) -> StoreStatusReport:
        s = self.state
        return StoreStatusReport(
            role="secondary", primary=self.primary.address, replicate=self.cfg.replicate, cursor=s.cursor,
            lag_events=s.lag_events, lag_seconds=s.lag_seconds, blobs_pending=s.blobs_pending, connected=s.connected,
            resyncs=s.resyncs, events_applied=s.events_applied, last_error=s.last_error, checked_at=s.checked_at,
            last_resync=s.last_resync)

    # --- following the stream ---
    async def _follow(self) -> None:
        delay = 0.25
        while True:
            applied_before = self.state.events_applied
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - reported, then retried: the follower never gives up
                self.state.connected = False
                self.state.last_error = getattr(err, "message", None) or repr(err)
                log.warning("replication from %s interrupted: %s", self.primary.address, self.state.last_error)
            if self.state.events_applied != applied_before:
                delay = 0.25
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.reconnect_max_s)

    async def _session(self) -> None:
        cursor, seq = await self.index.cursor(), await self.index.seq()
        status = await self.primary.status()
        trimmed = status.entries_added - status.stream_length  # the oldest events, gone from the primary's stream
        reason = ""
        if trimmed > seq:
            reason = (f"the primary's event stream was trimmed past this region's cursor {cursor} ({trimmed} events "
                      f"trimmed, {seq} applied here)")
        elif id_key(status.last_event) < id_key(cursor) or status.entries_added < seq:
            reason = (f"the primary's event stream ends at {status.last_event}, before this region's cursor {cursor} "
                      "(its Redis was replaced?)")
        if reason:
            await self.resync(status.last_event, status.entries_added, reason)
            cursor = await self.index.cursor()
        self.state.cursor = cursor
        self.state.connected = True
        self.state.last_error = ""
        log.info("following the primary store at %s from %s", self.primary.address, cursor)
        async for event in self.primary.watch(cursor):
            await self.apply(event)
        raise Unavailable(f"the primary store at {self.primary.address} ended its event stream")

    async def resync(self, mark: str, seq: int, reason: str) -> None:
        """Install the primary's whole state, then follow from ``mark`` (its stream's end before the listing, the
        ``seq``-th event it ever added)."""
        log.warning("resynchronising completely from the primary store at %s: %s", self.primary.address, reason)
        names = await self.primary.names()
        for name in names:
            manifests, aliases = await self.primary.versions(name)
            for m in manifests:
                self._check(m, m.digest)
            await self.index.resync_name(name, manifests, aliases)
        await self.index.set_cursor(mark, seq)
        self.state.resyncs += 1
        self.state.last_resync = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self._clock()))}: {reason}"
        log.warning("resynchronised %d adapters from the primary store at %s; following from %s", len(names),
                    self.primary.address, mark)
        self._notify()

    async def apply(self, e: StoreEvent) -> bool:
        """Install one primary event; False when it was applied before (a replay)."""
        if e.type == "VERSION_PUSHED":
            manifest = await self.primary.manifest(e.name, e.digest)
            self._check(manifest, e.digest)
            if manifest.version != e.version:
                raise ChecksumMismatch(f"the primary's manifest of {e.name}@{e.digest} says version "
                                       f"{manifest.version}, its event says {e.version}")
            done = await self.index.apply_version(e.cursor, manifest)
            if self._wake is not None:
                self._wake.set()
            if done and self.cfg.replicate != "eager":  # lazy: blobs this bucket already has are not pending
                self._spawn(self._prune(manifest))
        elif e.type in ("ALIAS_CHANGED", "ALIAS_DELETED"):
            targets = e.targets if e.type == "ALIAS_CHANGED" else ()
            done = await self.index.apply_alias(e.cursor, e.name, e.alias, targets, e.version, e.digest)
        elif e.type == "VERSION_YANKED":
            done = await self.index.apply_yank(e.cursor, e.name, e.version, e.digest)
        else:  # ROLLOUT_CHANGED, TOKEN_REVOKED, and types newer than this module: passed on to local watchers
            done = await self.index.pass_on(e, revoke_until=self._clock() + REVOCATION_KEEP_S)
        self.state.cursor = e.cursor
        if done:
            self.state.events_applied += 1
        self._notify()
        return done

    @staticmethod
    def _check(manifest: Manifest, digest: str) -> None:
        if manifest.digest != digest:
            raise ChecksumMismatch(f"the primary's manifest of {manifest.name}@{manifest.version} hashes to "
                                   f"{manifest.digest}, not {digest}; it was not installed here")

    def _notify(self) -> None:
        if self._applied is not None:
            self._applied.set()
            self._applied = asyncio.Event()

    async def wait_until(self, check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
        """Wait (up to ``timeout``) until ``check()`` holds, re-checking after each change the follower installs."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if await check():
                return True
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._applied is None:
                return False
            await wait_event(self._applied, min(remaining, 0.25))

    # --- lag and blobs ---
    async def _measure(self) -> None:
        while True:
            await self.measure()
            await asyncio.sleep(self.cfg.lag_check_s)

    async def measure(self) -> None:
        """Lag against the primary now: events after the cursor, and how long the oldest has waited. Unreachable:
        the events last counted, and the time since it last knew it had everything."""
        s = self.state
        now = self._clock()
        try:
            s.blobs_pending = await self.index.pending_count()
            cursor = await self.index.cursor()
            st = await self.primary.status(since=cursor)
        except AdapterFleetError as err:
            s.lag_seconds = max(0.0, now - s.caught_up_at)
            s.checked_at = now
            log.debug("lag check failed: %s", err.message)
            return
        s.lag_events = st.events_after
        s.lag_seconds = max(0.0, now - st.oldest_after_time) if st.events_after else 0.0
        if not st.events_after:
            s.caught_up_at = now
        s.checked_at = now

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _prune(self, manifest: Manifest) -> None:
        try:
            await self.copier.ensure_known(manifest)
        except AdapterFleetError as err:
            log.debug("checking the blobs of %s here failed: %s", manifest.key, err.message)

    async def _pending(self) -> None:
        """--replicate eager: copy the blobs of replicated versions this bucket lacks, as they arrive."""
        while True:
            try:
                await self.copy_pending()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - retried on the next round
                log.warning("copying pending blobs failed: %s", getattr(err, "message", None) or repr(err))
            assert self._wake is not None
            await wait_event(self._wake, 1.0)
            self._wake.clear()

    async def copy_pending(self) -> None:
        now = self._clock()
        for sha, key in (await self.index.pending(limit=100_000)).items():
            if self._refused.get(sha, 0.0) > now:
                continue
            name, digest = key.split("@", 1)
            manifest = await self._manifest_of(name, digest)
            entry = next(f for f in manifest.files if f.sha256 == sha)
            try:
                await self.copier.copy(key, entry)
            except ChecksumMismatch:
                self._refused[sha] = now + RETRY_REFUSED_S
        self.state.blobs_pending = await self.index.pending_count()
