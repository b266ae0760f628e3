"""Ref -> canonical key, cached. Canonical keys need no lookup; every other resolution is cached per ref and
dropped when the store's Watch stream reports a change to that adapter (push, alias move, yank), so the router
does not ask the store on every request and never keeps serving a moved alias for long.

Weighted aliases are cached as the live targets the store returns with one Resolve (yanked ones already dropped,
each with its version key), and the choice is made here, per request, with the store's own rule
(``adapterfleet.store.targets.choose``: weighted, sticky per routing key).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.store.aio_client import AsyncStoreClient
from adapterfleet.store.refs import Ref
from adapterfleet.store.targets import LiveTarget, choose

log = logging.getLogger("adapterfleet.router")


class Resolver:
    def __init__(self, store: AsyncStoreClient, rng: random.Random | None = None):
        self._store = store
        self._rng = rng or random.Random()
        self._cache: dict[str, tuple[LiveTarget, ...]] = {}  # ref -> live targets
        self._by_name: dict[str, set[str]] = defaultdict(set)
        self._generation: dict[str, int] = defaultdict(int)  # bumped per change, so a racing lookup is not cached
        self._task: asyncio.Task | None = None
        self.lookups = 0

    async def key(self, ref: str, routing_key: str = "") -> str:
        if not ref:
            return ""
        key = Ref.parse(ref).key
        if key is not None:
            return key
        targets = self._cache.get(ref)
        if targets is None:
            targets = await self._lookup(ref)
        return choose(targets, routing_key, self._rng).key

    async def _lookup(self, ref: str) -> tuple[LiveTarget, ...]:
        self.lookups += 1
        name = Ref.parse(ref).name
        generation = self._generation[name]
        targets = (await self._store.resolve(ref)).targets
        if self._generation[name] == generation:  # no change arrived while we asked
            self._cache[ref] = targets
            self._by_name[name].add(ref)
        return targets

    def invalidate(self, name: str) -> None:
        self._generation[name] += 1
        for ref in self._by_name.pop(name, set()):
            self._cache.pop(ref, None)

    # --- watch ------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        cursor = "$"
        while True:
            try:
                async for event in self._store.watch(cursor):
                    cursor = event.cursor
                    self.invalidate(event.name)
            except AdapterFleetError as err:
                log.warning("store watch broke (%s); dropping cached resolutions and reconnecting", err.message)
            self._cache.clear()  # we may have missed events: start over
            self._by_name.clear()
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
