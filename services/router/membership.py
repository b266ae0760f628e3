"""The router's view of the workers: the registry's records, refreshed every ``poll_s``, plus what only this
router knows right now (its own in-flight requests per worker, each worker's circuit breaker, adapters it has
just sent somewhere to be loaded).

Breakers (``breaker.py``) see only transport failures; at most ``max_ejected`` of the workers (rounded down) are
ejected at once, so no run of failures, let alone one bad caller, can empty the healthy set. A worker that says it
is draining is ejected at once (the registry drops it on the next poll anyway).

The registry is one witness, this router's own calls another. A worker whose record lapsed without a word (not
draining) but that answered this router within the last ``keep_s`` stays in the view: after an outage of the store
or its Redis longer than the records' TTL, every record has lapsed until the workers announce again, and the
workers serving right now must not vanish meanwhile. One that stopped answering falls out ``keep_s`` after its last
answer (sooner in effect: its breaker ejects it).

Load. Requests this router proxies are counted exactly (its own in-flight). Requests that direct (lookaside)
callers stream to workers themselves pass no router: while any are reported (``begun``/``ended``, from Route answers
and callers' ReportRoutes, within ``lookaside_s``), a worker's load is this router's in-flight plus the estimate of
the rest (``load.py``: its announcements and the callers' reports). ``benchmarks/routing_sim.py`` measures the
placement goals on that estimate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from adapterfleet.common.tiers import LOADING
from adapterfleet.router.breaker import Breaker, BreakerConfig, State
from adapterfleet.router.faults import Fault
from adapterfleet.router.load import LoadEstimate
from adapterfleet.router.placement import WorkerView
from adapterfleet.store.workers import WorkerRecord

log = logging.getLogger("adapterfleet.router")
Source = Callable[[], Awaitable[list[WorkerRecord]]]


class Membership:
    def __init__(self, source: Source, *, poll_s: float = 0.5, breaker: BreakerConfig | None = None,
                 pending_s: float = 5.0, keep_s: float = 3.0, clock: Callable[[], float] = time.monotonic,
                 direct_hold_s: float = 5.0, lookaside_s: float = 10.0):
        self._source = source
        self._poll = poll_s
        self._keep_s = keep_s
        self._breaker_cfg = breaker or BreakerConfig()
        self._pending_s = pending_s
        self._clock = clock
        self._records: dict[str, WorkerRecord] = {}
        self._breakers: dict[str, Breaker] = {}
        self._pending: dict[str, dict[str, float]] = defaultdict(dict)  # worker -> key -> until
        self.inflight: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task | None = None
        self._views: list[WorkerView] | None = None
        self._lookaside_s = lookaside_s
        self._lookaside_until = -float("inf")  # direct callers reported within lookaside_s
        self._direct = LoadEstimate(direct_hold_s)

    # --- refresh ------------------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        records = await self._source()
        now, listed = self._clock(), {r.id for r in records}
        kept = {w: r for w, r in self._records.items() if w not in listed and self._answered_lately(w, now)}
        for r in records:
            old = self._records.get(r.id)
            if old is None or old.load != r.load or old.adapters != r.adapters:  # a new announcement
                self._direct.announced(r.id, r.load, self.inflight[r.id], now)
        self._records = kept | {r.id: r for r in records if not r.draining}
        self._breakers = {w: b for w, b in self._breakers.items() if w in self._records}
        self._direct.forget(set(self._records))
        self._views = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    log.warning("the worker registry answers again")
                failing = False
            except Exception as err:  # noqa: BLE001 - keep serving on the last view we had
                if not failing:  # once per outage, not every poll
                    log.warning("cannot refresh the worker registry (%s); routing on the last view", err)
                failing = True
            await asyncio.sleep(self._poll)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    # --- what this router observes ----------------------------------------------------------------------------------
    def _breaker(self, worker_id: str) -> Breaker:
        b = self._breakers.get(worker_id)
        if b is None:
            b = self._breakers[worker_id] = Breaker(self._breaker_cfg)
        return b

    def outcome(self, worker_id: str, fault: Fault | None) -> None:
        """The outcome of a call to the worker (None: it succeeded). Only a transport failure counts against it;
        any other answer, an error included, shows it is alive."""
        b = self._breaker(worker_id)
        now = self._clock()
        if fault is Fault.DRAINING:
            b.trip(now)
        elif fault is Fault.TRANSPORT:
            if b.failed(now) and (b.state is State.HALF_OPEN or self._may_eject()):
                b.trip(now)
                log.warning("worker %s ejected after %d transport failures in a row (ejection %d)",
                            self._address(worker_id), b.consecutive, b.trips)
        else:
            reopened = b.ejected
            b.answered(now)
            if reopened:
                log.info("worker %s answered its probe: readmitted", self._address(worker_id))
        self._views = None

    def _answered_lately(self, worker_id: str, now: float) -> bool:
        b = self._breakers.get(worker_id)
        return b is not None and not b.ejected and now - b.last_answer <= self._keep_s

    def _may_eject(self) -> bool:
        ejected = sum(1 for w, b in self._breakers.items() if b.ejected and w in self._records)
        return ejected < int(len(self._records) * self._breaker_cfg.max_ejected)

    def _address(self, worker_id: str) -> str:
        r = self._records.get(worker_id)
        return r.address if r else worker_id

    def expect(self, worker_id: str, key: str) -> None:
        """``key`` was just sent to ``worker_id`` (a request or a load): treat it as loading there for a while."""
        if key:
            self._pending[worker_id][key] = self._clock() + self._pending_s
            self._views = None

    def begin(self, worker_id: str) -> None:
        self.inflight[worker_id] += 1
        self._breaker(worker_id).begin()
        self._views = None

    def end(self, worker_id: str) -> None:
        self.inflight[worker_id] -= 1
        b = self._breakers.get(worker_id)
        if b is not None:
            b.abandon()  # a probe whose outcome was recorded has cleared this already
        self._views = None

    def direct(self, worker_id: str, begun: int = 0, ended: int = 0) -> None:
        """A direct caller began ``begun`` and ended ``ended`` requests on ``worker_id`` itself (not through this
        router): reported by Route answers and ReportRoutes."""
        now = self._clock()
        self._lookaside_until = now + self._lookaside_s
        self._direct.begun(worker_id, max(0, begun), now)
        self._direct.ended(worker_id, max(0, ended), now)
        self._views = None

    def record(self, worker_id: str) -> WorkerRecord | None:
        return self._records.get(worker_id)

    def inflight_now(self) -> list[tuple[str, int]]:
        """(address, this router's requests in flight) of each registered worker. Only reads, so the metrics
        thread may call it while the loop routes (``views`` prunes and advances state: the loop's alone). Copying a
        dict is one step under the GIL."""
        records, inflight = list(self._records.values()), dict(self.inflight)
        return [(r.address, inflight.get(r.id, 0)) for r in records]

    def breakers(self) -> list[tuple[WorkerRecord, Breaker]]:
        """Each registered worker with its breaker (a fresh, closed one for workers never called)."""
        return [(r, self._breakers.get(w) or Breaker(self._breaker_cfg)) for w, r in sorted(self._records.items())]

    # --- the snapshot placement sees --------------------------------------------------------------------------------
    def views(self) -> list[WorkerView]:
        unsettled = any(b.ejected for b in self._breakers.values())  # OPEN turns HALF_OPEN with time
        now = self._clock()
        lookaside = now < self._lookaside_until  # direct callers' reports age: recompute every time
        if self._views is not None and not self._pending and not unsettled and not lookaside:
            return self._views
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
            if lookaside:  # direct callers' requests pass no router: announced and reported
                load += self._direct.load(r.id, now)
            b = self._breakers.get(r.id)
            healthy = b is None or b.available(now)
            views.append(WorkerView(r.id, r.address, r.region, load, r.capacity, resident, healthy))
        self._pending = defaultdict(dict, {w: ks for w, ks in self._pending.items() if ks})
        self._views = views
        return views
