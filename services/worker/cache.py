"""The worker's adapter cache: active slots (on the model's device) -> host RAM -> local disk.

Each tier has a budget and evicts least-recently-used entries that are neither pinned nor in use. Entries are
keyed by the canonical version key (``name@sha256:...``), so an alias that moves never changes what an in-flight
request runs on: it holds a lease on its key until it finishes. Concurrent requests for the same cold adapter
share one load (single flight). Unload frees the tensors; an entry in use is dropped when its last lease ends.

The cache decides *what* lives where; the :class:`Backend` does the work (fetch + verify, parse + check,
install into a slot, disk I/O), in worker threads so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapterfleet.common.aio import listed_task
from adapterfleet.common.errors import NotFound, ResourceExhausted
from adapterfleet.common.tiers import ACTIVE, CACHE_TIERS, DISK, HOST, LOADING

log = logging.getLogger("adapterfleet.worker.cache")


class Backend(Protocol):
    def fetch(self, key: str) -> tuple[Any, dict[str, bytes]]: ...          # (manifest, verified file bytes)
    def parse(self, manifest: Any, files: dict[str, bytes]) -> Any: ...     # -> weights (checked against the base)
    def nbytes(self, weights: Any) -> int: ...
    def install(self, slot: int, weights: Any) -> None: ...
    def remove(self, slot: int) -> None: ...
    def save_disk(self, key: str, manifest: Any, files: dict[str, bytes]) -> int: ...  # bytes written
    def load_disk(self, key: str) -> tuple[Any, dict[str, bytes]] | None: ...         # verified again, or None
    def drop_disk(self, key: str) -> None: ...
    def scan_disk(self) -> list[tuple[str, int, float]]: ...                    # (key, bytes, modified) on disk


@dataclass
class Entry:
    key: str
    manifest: Any = None
    weights: Any = None        # host-tier copy (CPU tensors)
    nbytes: int = 0
    disk_bytes: int = 0        # > 0: on local disk
    slot: int | None = None    # active slot
    pinned: bool = False
    refs: int = 0
    last_used: float = 0.0
    hits: int = 0
    dropping: bool = False     # unload requested while in use

    @property
    def tier(self) -> str:
        """Where the adapter is; LOADING while no tier holds it yet (its first load is under way)."""
        if self.slot is not None:
            return ACTIVE
        return HOST if self.weights is not None else DISK if self.disk_bytes else LOADING


@dataclass
class CacheStats:
    cold_loads: int = 0        # fetched from the store
    disk_loads: int = 0
    host_loads: int = 0
    hits: int = 0              # requests whose adapter was already in an active slot
    misses: int = 0            # requests that waited for a load (their own or a concurrent one)
    fetched_bytes: int = 0     # from the store
    evictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CACHE_TIERS, 0))


class Lease:
    """A request's hold on one adapter version in an active slot; release exactly once."""

    def __init__(self, cache: AdapterCache, entry: Entry):
        self._cache, self.entry, self._open = cache, entry, True

    @property
    def slot(self) -> int:
        assert self.entry.slot is not None
        return self.entry.slot

    @property
    def key(self) -> str:
        return self.entry.key

    def release(self) -> None:
        if self._open:
            self._open = False
            self._cache._release(self.entry)  # noqa: SLF001 - the lease is the cache's own handle


class AdapterCache:
    def __init__(self, backend: Backend, *, max_slots: int, host_bytes: int, disk_bytes: int,
                 slot_wait_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 on_load: Callable[[float], None] = lambda seconds: None):
        self._b = backend
        self._on_load = on_load  # seconds a request waited for its adapter to become active
        self.max_slots = max_slots
        self.host_budget = host_bytes
        self.disk_budget = disk_bytes
        self._slot_wait = slot_wait_s
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._tasks: set[asyncio.Task] = set()   # disk writes, unloads, wake-ups: held until they end
        self._saving: dict[str, asyncio.Task] = {}  # key -> its disk write, still running (off the load's path)
        self._slots: dict[int, str] = {}          # slot -> key installed or being installed there
        self._removing: set[int] = set()          # slots whose adapter is being taken out
        self._loading: dict[str, asyncio.Future] = {}
        self._slot_freed: asyncio.Condition | None = None
        self.stats = CacheStats()

    def adopt_disk(self) -> int:
        """Take up the entries the disk-cache directory already holds (an earlier run's, or another worker's that
        shares it): they count against the disk budget, load without a fetch (verified again), and are evicted like
        the rest. Oldest first; over the budget, the oldest are removed now. Returns how many were taken up. Without
        a disk tier the directory is not touched."""
        if self.disk_budget <= 0:
            return 0
        found = sorted(self._b.scan_disk(), key=lambda f: f[2])
        for i, (key, size, _) in enumerate(found):
            entry = self._entries.setdefault(key, Entry(key))
            entry.disk_bytes, entry.last_used = size, -1e12 + i  # before anything this run uses, in their order
        while self.tier_bytes(DISK) > self.disk_budget:
            victim = min((e for e in self._entries.values() if e.disk_bytes), key=lambda e: e.last_used)
            self._b.drop_disk(victim.key)
            del self._entries[victim.key]
            self.stats.evictions[DISK] += 1
        return sum(1 for key, _, _ in found if key in self._entries)

    # --- requests -----------------------------------------------------------------------------------------------
    async def acquire(self, key: str) -> Lease:
        """Lease ``key`` in an active slot, loading it (once, however many ask) if it is not there."""
        started = None  # set on a miss: when this request started waiting for a load
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.slot is not None:
                entry.dropping = False  # new traffic cancels a pending unload
                entry.refs += 1
                if started is None:
                    entry.hits += 1
                    self.stats.hits += 1
                else:
                    self._on_load(self._clock() - started)
                self._touch(entry)
                return Lease(self, entry)
            if started is None:
                started = self._clock()
                self.stats.misses += 1
            pending = self._loading.get(key) or self._load(key, self._activate)
            await asyncio.shield(pending)  # a request that goes away stops waiting; the load goes on

    async def prefetch(self, key: str, tier: str = ACTIVE, pin: bool = False) -> Entry:
        """LoadAdapter: bring ``key`` to ``tier`` (and pin it) without serving a request."""
        if tier == ACTIVE:
            lease = await self.acquire(key)
            lease.entry.pinned = lease.entry.pinned or pin
            lease.release()
            return lease.entry
        while (pending := self._loading.get(key)) is not None:  # one load of a key at a time: wait for it first
            await asyncio.shield(pending)
        entry = self._entries.get(key)
        if entry is None or (tier == HOST and entry.weights is None and entry.slot is None):
            await asyncio.shield(self._load(key, self._to_host_then_disk if tier == HOST else self._to_disk))
            entry = self._entries[key]
        if tier == DISK:
            await self._saved(key)  # a write of its files under way (after an active load): on disk when we answer
        entry.pinned = entry.pinned or pin
        return entry

    def _release(self, entry: Entry) -> None:
        entry.refs -= 1
        if entry.refs == 0 and entry.dropping:
            self._spawn(self.unload(entry.key))
        self._notify_slot()

    # --- management ---------------------------------------------------------------------------------------------
    def pin(self, key: str, pinned: bool) -> Entry:
        entry = self._get(key)
        entry.pinned = pinned
        return entry

    async def unload(self, key: str) -> bool:
        """Drop ``key`` from every tier. In use: dropped as soon as its last request finishes. A load of ``key``
        under way ends first (it would install into a slot after the entry was dropped, and that slot would never be
        freed)."""
        while (pending := self._loading.get(key)) is not None:
            with contextlib.suppress(Exception):  # a load that failed took back what it added itself
                await asyncio.shield(pending)
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.refs > 0:
            entry.dropping = True
            return True
        if entry.slot is not None:
            await self._deactivate(entry)
        entry.weights = None
        await self._saved(key)
        if entry.disk_bytes:
            await asyncio.to_thread(self._b.drop_disk, key)
        if self._entries.get(key) is entry:
            del self._entries[key]
        return True

    def needs_fetch(self, key: str) -> bool:
        """Whether serving ``key`` now would fetch it from the store (no tier holds it)."""
        entry = self._entries.get(key)
        return entry is None or (entry.weights is None and not entry.disk_bytes and entry.slot is None)

    def entries(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: e.key)

    def tier_bytes(self, tier: str) -> int:
        entries = list(self._entries.values())  # one step under the GIL: the metrics thread asks too
        if tier == DISK:
            return sum(e.disk_bytes for e in entries)
        if tier == HOST:
            return sum(e.nbytes for e in entries if e.weights is not None)
        return sum(e.nbytes for e in entries if e.slot is not None)

    def loading(self) -> list[str]:
        return sorted(self._loading)

    def _get(self, key: str) -> Entry:
        entry = self._entries.get(key)
        if entry is None:
            raise NotFound(f"adapter {key} is not resident on this worker; LoadAdapter it first")
        return entry

    # --- loading ------------------------------------------------------------------------------------------------
    def _load(self, key: str, load) -> asyncio.Future:
        """Run ``load(key)`` as a task of its own, listed as ``key``'s load before this returns and until it ends;
        callers await it shielded. So the request that started a load can go away (its client hung up) without
        cancelling it: other requests wait on the same load, and a load cut off mid-install would leave its slot
        freed while its thread still filled it."""
        return listed_task(self._loading, key, load(key))

    async def _to_host(self, key: str) -> tuple[Entry, dict[str, bytes] | None]:
        """Make sure ``key`` has a host-tier copy of its weights: from host, disk, or the store. Also returns the
        files fetched from the store, if that is where they came from: the caller keeps them on disk once its load
        is done (``_save_later``)."""
        entry = self._entries.setdefault(key, Entry(key))
        if entry.weights is not None:
            self.stats.host_loads += 1
            return entry, None
        files: dict[str, bytes] | None = None
        fetched: dict[str, bytes] | None = None
        weights: Any = None  # set with the fetched files: their parse
        failure: Exception | None = None  # the fetched bytes did not parse (or fit this base model)
        try:
            if entry.disk_bytes:
                loaded = await asyncio.to_thread(self._b.load_disk, key)
                if loaded is not None:
                    entry.manifest, files = loaded
                    self.stats.disk_loads += 1
                else:
                    entry.disk_bytes = 0  # vanished or corrupt on disk: fetch again
            if files is None:
                # fetch and parse in one thread hop; bytes that never load on this base model are not kept on disk
                entry.manifest, got, weights, failure = await asyncio.to_thread(self._fetch_parsed, key)
                files = fetched = got
                self.stats.cold_loads += 1
                self.stats.fetched_bytes += sum(map(len, got.values()))
        except BaseException:
            self._forget_if_empty(entry)
            raise
        try:
            if failure is not None:
                raise failure
            if weights is None:  # read from disk
                assert files is not None
                weights = await asyncio.to_thread(self._b.parse, entry.manifest, files)
        except BaseException:
            await self._drop_disk(entry)  # bytes that never load on this base model are no use on disk either
            self._forget_if_empty(entry)
            raise
        entry.weights = weights
        entry.nbytes = self._b.nbytes(entry.weights)
        self._touch(entry)
        await self._evict_host(keep=entry)
        return entry, fetched

    def _fetch_parsed(self, key: str) -> tuple[Any, dict[str, bytes], Any, Exception | None]:
        """(manifest, verified files, weights or None, why they did not parse or None); runs in a worker thread."""
        manifest, files = self._b.fetch(key)
        try:
            return manifest, files, self._b.parse(manifest, files), None
        except Exception as err:  # noqa: BLE001 - handed back to the loop and raised there, after the bookkeeping
            return manifest, files, None, err

    async def _to_disk(self, key: str) -> None:
        entry = self._entries.setdefault(key, Entry(key))
        if not entry.disk_bytes:
            try:
                # parsed too, as a host load is: bytes that never load on this base model are refused here, not
                # kept on disk and reported resident (a rollout's warm would count them as loaded)
                entry.manifest, files, _, failure = await asyncio.to_thread(self._fetch_parsed, key)
                self.stats.cold_loads += 1
                self.stats.fetched_bytes += sum(map(len, files.values()))
                if failure is not None:
                    raise failure
                await self._save_disk(entry, files)
            except BaseException:
                self._forget_if_empty(entry)
                raise
        self._touch(entry)

    def _forget_if_empty(self, entry: Entry) -> None:
        """A load that failed leaves no entry behind (nothing listed, nothing announced) unless a tier holds it."""
        empty = entry.slot is None and entry.weights is None and not entry.disk_bytes and entry.refs == 0
        if empty and self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    async def _drop_disk(self, entry: Entry) -> None:
        await self._saved(entry.key)
        if entry.disk_bytes:
            entry.disk_bytes = 0
            await asyncio.to_thread(self._b.drop_disk, entry.key)

    async def _to_host_then_disk(self, key: str) -> None:
        self._save_later(*await self._to_host(key))

    def _save_later(self, entry: Entry, files: dict[str, bytes] | None) -> None:
        """Keep freshly fetched (verified, parsed) files on the disk tier, off the load's path: a default worker's
        cold load waited ~15 ms for this write before its install (``benchmarks/cold_load.py``), and a write beside
        the install slowed it by as much. Unload and disk drops of the key wait for it; a write that fails is
        logged, and the adapter serves from memory anyway."""
        if files is None or self.disk_budget <= 0 or entry.key in self._saving:
            return

        async def save() -> None:
            try:
                await self._save_disk(entry, files)
            except Exception as err:  # noqa: BLE001 - a full or broken disk must not fail what is already served
                log.warning("could not keep %s on local disk (%s); it will be fetched again when needed",
                            entry.key, err)
            finally:
                del self._saving[entry.key]
            if self._entries.get(entry.key) is not entry and entry.disk_bytes:  # forgotten while it was written
                entry.disk_bytes = 0
                await asyncio.to_thread(self._b.drop_disk, entry.key)

        task = asyncio.ensure_future(save())
        self._saving[entry.key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _saved(self, key: str) -> None:
        """Wait until a disk write of ``key`` started by a load has ended (it never raises)."""
        task = self._saving.get(key)
        if task is not None:
            await asyncio.shield(task)

    async def flush(self) -> None:
        """Wait for every disk write still running (tests, benchmarks)."""
        while self._saving:
            await asyncio.gather(*map(asyncio.shield, list(self._saving.values())))

    async def _save_disk(self, entry: Entry, files: dict[str, bytes]) -> None:
        if self.disk_budget <= 0:
            return
        entry.disk_bytes = await asyncio.to_thread(self._b.save_disk, entry.key, entry.manifest, files)
        await self._evict_disk(keep=entry)

    async def _activate(self, key: str) -> None:
        before = self._entries.get(key)  # resident in some tier before this load
        had_weights = before is not None and before.weights is not None
        entry, fetched = await self._to_host(key)
        weights = entry.weights
        try:
            slot = await self._claim_slot(key)  # no free slot (RESOURCE_EXHAUSTED): the host copy stays, listed
        except BaseException:
            self._save_later(entry, fetched)
            raise
        try:
            await asyncio.to_thread(self._b.install, slot, weights)
        except BaseException:
            del self._slots[slot]
            self._notify_slot()
            if not had_weights:  # a load that failed takes back what it added
                entry.weights = None
            if before is None:
                await self._drop_disk(entry)
                self._forget_if_empty(entry)
            else:
                self._save_later(entry, fetched)
            raise
        entry.slot = slot
        self._touch(entry)
        self._save_later(entry, fetched)

    async def _claim_slot(self, key: str) -> int:
        """A free slot, evicting the least recently used idle entry if need be; waits for one to go idle.

        The slot is reserved for ``key`` before any await, so concurrent loads never get the same slot, and a
        slot whose adapter is still being removed is not free yet.
        """
        deadline = self._clock() + self._slot_wait
        while True:
            free = next((s for s in range(self.max_slots) if s not in self._slots and s not in self._removing), None)
            if free is not None:
                self._slots[free] = key
                return free
            idle = [e for e in (self._entries.get(k) for k in self._slots.values())
                    if e is not None and e.slot is not None and not e.pinned and e.refs == 0]
            if idle:
                victim = min(idle, key=lambda e: e.last_used)
                slot, victim.slot = victim.slot, None
                assert slot is not None  # idle holds only entries with a slot
                self._slots[slot] = key  # handed over directly: nobody else can take it meanwhile
                await asyncio.to_thread(self._b.remove, slot)
                self.stats.evictions[ACTIVE] += 1
                return slot
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ResourceExhausted(
                    f"all {self.max_slots} adapter slots are pinned or serving requests; retry, unpin an adapter, "
                    "or start the worker with more --max-slots")
            self._slot_freed = self._slot_freed or asyncio.Condition()
            async with self._slot_freed:
                with contextlib.suppress(asyncio.TimeoutError):  # re-check the slots at least every second
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=min(remaining, 1.0))

    async def _deactivate(self, entry: Entry) -> None:
        slot, entry.slot = entry.slot, None
        if slot is None:
            return
        del self._slots[slot]
        self._removing.add(slot)
        # the slot is free only once the remove has run: an unload cancelled while its remove waits for a thread
        # (its RPC's deadline) must not free a slot the model still holds (the next install there would fail)
        removing = asyncio.ensure_future(asyncio.to_thread(self._b.remove, slot))
        removing.add_done_callback(lambda task: self._removed(slot, task))
        await asyncio.shield(removing)

    def _removed(self, slot: int, task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: raised to the unload that waits, if it still does
        self._removing.discard(slot)
        self._notify_slot()

    def _notify_slot(self) -> None:
        cond = self._slot_freed
        if cond is None:
            return

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        self._spawn(notify())

    def _spawn(self, coro) -> None:
        """Run ``coro`` in the background, holding the task until it ends (the loop keeps only weak references)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- eviction -----------------------------------------------------------------------------------------------
    def _touch(self, entry: Entry) -> None:
        entry.last_used = self._clock()

    async def _evict_host(self, keep: Entry) -> None:
        """Drop host copies, least recently used first, until the host tier fits its budget."""
        while self.tier_bytes(HOST) > self.host_budget:
            victims = [e for e in self._entries.values()
                       if e.weights is not None and e is not keep and not e.pinned and e.refs == 0
                       and e.key not in self._loading]
            if not victims:
                return
            victim = min(victims, key=lambda e: e.last_used)
            victim.weights = None  # the active slot (if any) keeps its own copy; disk keeps the bytes
            self.stats.evictions[HOST] += 1
            if victim.slot is None and not victim.disk_bytes and victim.key not in self._saving:
                del self._entries[victim.key]

    async def _evict_disk(self, keep: Entry) -> None:
        """Drop disk copies, least recently used first, until the disk tier fits its budget. Entries a load is
        working on, or that requests hold, are never victims; the victim's bytes count as gone before the await,
        so a concurrent eviction picks another, and the entry is forgotten only if nothing took it up meanwhile."""
        while self.tier_bytes(DISK) > self.disk_budget:
            victims = [e for e in self._entries.values()
                       if e.disk_bytes and e is not keep and not e.pinned and e.refs == 0
                       and e.key not in self._loading]
            if not victims:
                return
            victim = min(victims, key=lambda e: e.last_used)
            victim.disk_bytes = 0
            self.stats.evictions[DISK] += 1
            await asyncio.to_thread(self._b.drop_disk, victim.key)
            if (self._entries.get(victim.key) is victim and victim.slot is None and victim.weights is None
                    and not victim.disk_bytes and victim.key not in self._loading and victim.key not in
                    self._slots.values()):
                del self._entries[victim.key]
