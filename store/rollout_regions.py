"""Where a rollout's weights live. Without regions: the alias itself. With ``--regions a,b`` on one store: a
regional override of the alias, ``<alias>~<region>`` (a name no user alias can have: '~' is not allowed), which
the store's Resolve prefers for a caller that names its region (routers do), so region a moves step by step while
b stays on the alias, then b moves. When the last region reaches 100 the alias itself moves to the new version and
the overrides are deleted; a rollback puts the alias back on the old version and deletes the overrides. Every move
is a compare-and-set through the index's alias script."""

from __future__ import annotations

import contextlib

from adapterfleet.common.errors import NotFound
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.rollout_record import Rollout
from adapterfleet.store.rollout_record import override_alias as override_name
from adapterfleet.store.targets import Targets


class RegionalAlias:
    def __init__(self, index: RedisIndex):
        self.index = index

    async def get(self, name: str, alias: str, region: str = "") -> Targets | None:
        """What callers in ``region`` resolve ``name@alias`` to ("" = the alias itself)."""
        if region:
            override = await self.index.alias(name, override_name(alias, region))
            if override is not None:
                return override
        return await self.index.alias(name, alias)

    async def move(self, r: Rollout, targets: Targets, everywhere: bool) -> None:
        """Compare-and-set ``targets`` where ``r`` keeps its weights now; AliasConflict when they moved."""
        if not r.regions:
            if targets != r.targets:
                await self.index.set_alias(r.name, r.alias, targets, r.targets)
            return
        final = targets == ((r.to_version, 100),) and r.region_index >= len(r.regions) - 1
        if everywhere or final:
            start = ((r.from_version, 100),)
            current = await self.index.alias(r.name, r.alias)
            if current != targets:
                await self.index.set_alias(r.name, r.alias, targets, start)
            for region in r.regions:
                with contextlib.suppress(NotFound):  # this region never got an override (or it is gone)
                    await self.index.set_alias(r.name, override_name(r.alias, region), (), "any")
            return
        key = override_name(r.alias, r.region)
        expect = None if r.step < 0 else r.targets
        await self.index.set_alias(r.name, key, targets, expect)
