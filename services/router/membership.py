"""The router's view of the workers: the registry's records, refreshed every ``poll_s``, plus what only this
router knows right now (its own in-flight requests per worker, workers whose calls just failed, adapters it has
just sent somewhere to be loaded)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from adapterfleet.common.tiers import LOADING
from adapterfleet.router.placement import WorkerView
from adapterfleet.store.workers import WorkerRecord

log = logging.getLogger("adapterfleet.router")
Source = Callable[[], Awaitable[list[WorkerRecord]]]


class Membership:
    def __init__(self, source: Source, *, poll_s: float = 0.5, unhealthy_s: float = 3.0,
                 pending_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._source = source
        self._poll = poll_s
        self._unhealthy_s = unhealthy_s
        self._pending_s = pending_s
        self._clock = clock
        self._records: dict[str, WorkerRecord] = {}
        self._failed_until: dict[str, float] = {}
        self._pending: dict[str, dict[str, float]] = defaultdict(dict)  # worker -> key -> until
        self.inflight: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task | None = None
        self._views: list[WorkerView] | None = None

    # --- refresh ------------------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        records = await self._source()
        self._records = {r.id: r for r in records if not r.draining}
        self._views = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as err:  # noqa: BLE001 - keep serving on the last view we had
                log.warning("cannot refresh the worker registry: %s", err)
            await asyncio.sleep(self._poll)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    # --- what this router observes ----------------------------------------------------------------------------------
    def mark_failed(self, worker_id: str) -> None:
        self._failed_until[worker_id] = self._clock() + self._unhealthy_s
        self._views = None

    def expect(self, worker_id: str, key: str) -> None:
        """``key`` was just sent to ``worker_id`` (a request or a load): treat it as loading there for a while."""
        if key:
            self._pending[worker_id][key] = self._clock() + self._pending_s
            self._views = None

    def begin(self, worker_id: str) -> None:
        self.inflight[worker_id] += 1
        self._views = None

    def end(self, worker_id: str) -> None:
        self.inflight[worker_id] -= 1
        self._views = None

    def record(self, worker_id: str) -> WorkerRecord | None:
        return self._records.get(worker_id)

    # --- the snapshot placement sees --------------------------------------------------------------------------------
    def views(self) -> list[WorkerView]:
        if self._views is not None and not self._pending and not self._failed_until:
            return self._views
        now = self._clock()
        views = []
        for r in self._records.values():
            resident = dict(r.adapters)
            for key, until in list(self._pending.get(r.id, {}).items()):
                if until < now or key in resident:
                    del self._pending[r.id][key]
                else:
                    resident[key] = LOADING
            # This router's own in-flight count is exact and current; the announced load is up to a second old
            # and mostly our own traffic, so it would double-count. (Several routers each balance their share.)
            load = float(self.inflight[r.id])
            healthy = self._failed_until.get(r.id, 0.0) <= now
            views.append(WorkerView(r.id, r.address, r.region, load, r.capacity, resident, healthy))
        self._pending = defaultdict(dict, {w: ks for w, ks in self._pending.items() if ks})
        self._failed_until = {w: t for w, t in self._failed_until.items() if t > now}
        self._views = views
        return views
