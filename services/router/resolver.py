"""Ref -> canonical key, cached, and served stale while the store cannot be reached.

Canonical keys need no lookup; every other resolution is cached per ref and dropped when the store's Watch stream
reports a change to that adapter (push, alias move, yank), so the router does not ask the store on every request
and never keeps serving a moved alias for long. Concurrent misses for one ref share one lookup.

Weighted aliases are cached as the live targets the store returns with one Resolve (yanked ones already dropped,
each with its version key), and the choice is made here, per request, with the store's own rule
(``adapterfleet.store.targets.choose``: weighted, sticky per routing key).

Stale-while-error. A cached entry is *fresh* while the watch that would invalidate it is live. When the watch
breaks (store or its Redis down, network), entries are kept and served without asking the store, as long as they
were last known valid at most ``stale_max_s`` ago (``stale_serves`` counts these); past that bound a request asks
the store, and fails UNAVAILABLE, naming the store, if it cannot answer. A ref never resolved fails the same way.
The watch reconnects (backing off to 5 s) and resumes from the last event it saw, so the store replays every
change missed meanwhile and no invalidation is lost. A watch that never saw an event can only restart from "$"
(now), losing what happened in between: once that new stream is established (its first event, or open for
``settle_s``), every older entry stops being fresh and is asked for again on its next use (and served stale, within
the bound, if the store fails again).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from adapterfleet.common.aio import listed_task
from adapterfleet.common.errors import AdapterFleetError, Unavailable
from adapterfleet.store.aio_client import AsyncStoreClient
from adapterfleet.store.refs import Ref
from adapterfleet.store.targets import LiveTarget, choose

log = logging.getLogger("adapterfleet.router")
# the store's answers that mean "cannot answer now", not "no such thing": the caller gets UNAVAILABLE for these
STORE_DOWN = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "CANCELLED"})
NOW = "$"  # the watch cursor meaning "only events from now on"
RETRY_PAUSES = (0.05, 0.2)  # a Resolve the store answered UNAVAILABLE is asked again after these


@dataclass(frozen=True)
class _Entry:
    targets: tuple[LiveTarget, ...]
    epoch: int          # the watch's continuity it was fetched in (a watch restarted from "$" starts a new one)
    fetched_at: float


class Resolver:
    def __init__(self, store: AsyncStoreClient, rng: random.Random | None = None, *, stale_max_s: float = 300.0,
                 settle_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._rng = rng or random.Random()
        self._stale_max = stale_max_s
        self._settle = settle_s
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._by_name: dict[str, set[str]] = defaultdict(set)
        self._generation: dict[str, int] = defaultdict(int)  # bumped per change, so a racing lookup is not cached
        self._inflight: dict[str, asyncio.Future[tuple[LiveTarget, ...]]] = {}
        self._task: asyncio.Task | None = None
        self._epoch = 0
        self._lost_at: dict[int, float] = {}  # epoch -> when the watch covering it broke for good
        self._down_since: float | None = None  # the watch broke then and is not established again yet
        self._stream = 0                       # which watch stream is current (its settle timer checks)
        self._stream_cursor = NOW              # the cursor the current stream started from
        self.cursor = NOW                      # the last event seen
        self.lookups = self.stale_serves = self.watch_breaks = 0

    # --- resolving --------------------------------------------------------------------------------------------------
    async def key(self, ref: str, routing_key: str = "") -> str:
        if not ref:
            return ""
        key = Ref.parse(ref).key
        if key is not None:
            return key
        entry = self._cache.get(ref)
        if entry is not None:
            if self._fresh(entry):
                return choose(entry.targets, routing_key, self._rng).key
            if self._down_since is not None and self._within_bound(entry):  # an outage: do not wait on the store
                return self._serve_stale(entry, routing_key)
        try:
            targets = await self._lookup(ref)
        except Unavailable:
            if entry is not None and self._within_bound(entry):
                return self._serve_stale(entry, routing_key)
            raise
        return choose(targets, routing_key, self._rng).key

    def _fresh(self, entry: _Entry) -> bool:
        return entry.epoch == self._epoch and self._down_since is None

    def _within_bound(self, entry: _Entry) -> bool:
        """Was the entry known valid at most ``stale_max_s`` ago? Valid while its watch ran, or when fetched."""
        covered_until = self._lost_at.get(entry.epoch, self._down_since)
        valid_at = entry.fetched_at if covered_until is None else max(entry.fetched_at, covered_until)
        return self._clock() - valid_at <= self._stale_max

    def _serve_stale(self, entry: _Entry, routing_key: str) -> str:
        self.stale_serves += 1
        return choose(entry.targets, routing_key, self._rng).key

    async def _lookup(self, ref: str) -> tuple[LiveTarget, ...]:
        task = self._inflight.get(ref) or listed_task(self._inflight, ref, self._fetch(ref))
        return await asyncio.shield(task)  # a caller that goes away does not cancel the others' lookup

    async def _fetch(self, ref: str) -> tuple[LiveTarget, ...]:
        self.lookups += 1
        name = Ref.parse(ref).name
        generation, epoch, started = self._generation[name], self._epoch, self._clock()
        try:
            targets = await self._ask(ref)
        except AdapterFleetError as err:
            if err.code not in STORE_DOWN:
                raise
            raise Unavailable(
                f"cannot resolve {ref}: the store at {self._store.address} cannot answer now ({err.code}: "
                f"{err.message[:200]}); refs this router resolved before keep working for up to "
                f"{self._stale_max:g}s") from err
        if self._generation[name] == generation:  # no change arrived while we asked
            self._cache[ref] = _Entry(targets, epoch, started)
            self._by_name[name].add(ref)
        return targets

    async def _ask(self, ref: str) -> tuple[LiveTarget, ...]:
        """One Resolve, asked again after 50 and 200 ms when the store says UNAVAILABLE: a store's first command on
        a pooled Redis connection fails once after Redis restarts, and an alias that just moved has no stale entry
        left to fall back on."""
        for pause in RETRY_PAUSES:
            try:
                return (await self._store.resolve(ref)).targets
            except AdapterFleetError as err:
                if err.code != "UNAVAILABLE":
                    raise
            await asyncio.sleep(pause)
        return (await self._store.resolve(ref)).targets

    def invalidate(self, name: str) -> None:
        self._generation[name] += 1
        for ref in self._by_name.pop(name, set()):
            self._cache.pop(ref, None)

    # --- the state of the watch, for metrics ------------------------------------------------------------------------
    @property
    def watch_up(self) -> bool:
        return self._down_since is None

    def stale_for(self) -> float:
        """Seconds since the watch broke (0 while it runs)."""
        return 0.0 if self._down_since is None else self._clock() - self._down_since

    # --- watch ------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            self._stream += 1
            stream, self._stream_cursor = self._stream, self.cursor
            timer = loop.call_later(self._settle, self._established, stream)
            try:
                async for event in self._store.watch(self.cursor):
                    self._established(stream)
                    self.cursor = event.cursor
                    self.invalidate(event.name)
                reason = "the store ended the stream"
            except AdapterFleetError as err:
                reason = f"{err.code}: {err.message[:200]}"
                if err.code == "INVALID_ARGUMENT":  # the store refuses our cursor: start over from now
                    self.cursor = NOW
            except Exception as err:  # noqa: BLE001 - whatever broke the stream, keep watching
                reason = repr(err)[:200]
            finally:
                timer.cancel()
            delay = 0.5 if self._down_since is None else min(delay * 2, 5.0)
            self._broke(reason)
            await asyncio.sleep(delay)

    def _established(self, stream: int) -> None:
        if stream != self._stream or self._down_since is None:
            return
        outage = self._clock() - self._down_since
        if self._stream_cursor == NOW:  # events between the break and now are lost: older entries are not fresh
            self._lost_at[self._epoch] = self._down_since
            self._epoch += 1
            log.warning("store watch re-established after %.1fs from \"now\" (no event seen before): cached "
                        "resolutions will be asked for again", outage)
        else:
            log.warning("store watch re-established after %.1fs, resumed after event %s", outage,
                        self._stream_cursor)
        self._down_since = None

    def _broke(self, reason: str) -> None:
        self._stream += 1  # the old stream's settle timer must not declare it established
        if self._down_since is None:
            self._down_since = self._clock()
            self.watch_breaks += 1
            log.warning("store watch broke (%s); serving cached resolutions for up to %gs while reconnecting "
                        "from cursor %s", reason, self._stale_max, self.cursor)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
