"""Where a request goes: affinity to resident adapters, bounded load, rendezvous hashing, hot-adapter copies.

Pure policy: no gRPC, no I/O, no clock. The router passes a snapshot of its workers and the time.

Bounded load. Over the workers considered (see regions below), with ``avg`` their mean load, a worker is
*within the bound* when

    load + 1 <= (1 + eps) * (avg + 1)

the "consistent hashing with bounded loads" rule (Mirrokni, Thorup, Zadimoghaddam, 2018) with +1 on both sides,
so that an idle fleet (avg 0) still admits a worker holding one request. The least loaded worker is always
within the bound (its load is <= avg), so a pick never fails while any worker is healthy.

Order of candidates for ``key`` (``choose``):
  1. holders of ``key`` within the bound: best tier first (active > host > disk > loading), least loaded within
     a tier, ties by rendezvous score;
  2. other workers within the bound, in rendezvous (highest-random-weight) order of ``key``: a cold adapter goes
     to a stable worker, and when the first one is over the bound the overflow goes to the *same* second one,
     so the same few workers keep the adapter;
  3. workers over the bound, least loaded first.
``key == ""`` (the base model, no adapter) orders by load alone.

Regions: with ``region`` set, healthy workers of that region come first (ordered as above, against their own
average); workers of other regions follow as the failover tail, and lead only when the region has no healthy,
non-excluded worker. (Since the least loaded own-region worker is always within the bound, "no eligible
own-region worker" and "no healthy own-region worker" are the same condition.)

Rendezvous scores are weighted by a worker's ``capacity`` (slots): score = -capacity / ln(u), u uniform in (0, 1)
from blake2b(key, worker id). With equal capacities this is plain HRW; a worker with twice the slots gets twice
the keys. Removing a worker moves only its keys; adding one moves ~1/n of them.

Heat: each ``record`` adds an impulse that decays with half-life ``heat_half_life_s``; ``heat`` is that sum times
ln 2 / half-life, which converges to the request rate (req/s) of a steady stream. An adapter wants
ceil(heat / hot_requests_per_copy) copies, clamped to 1..max_copies.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from adapterfleet.common.tiers import TIERS

TIER_RANK: Mapping[str, int] = {tier: rank for rank, tier in enumerate(TIERS)}   # active < host < disk < loading
_UNKNOWN_TIER = len(TIER_RANK)       # a tier this module does not know ranks after "loading"

_SCORE_CACHE_KEYS = 65_536            # keys whose rendezvous scores are kept (oldest dropped first)
_HEAT_PRUNE_EVERY = 4_096             # records between sweeps of cold heat entries
_HEAT_FORGET = 1e-3                   # a decayed impulse sum below this is dropped (~10 half-lives idle)
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class WorkerView:
    id: str
    address: str
    region: str
    load: float                       # requests in flight + queued on that worker (as the router sees it)
    capacity: int                     # active adapter slots
    resident: Mapping[str, str]       # adapter key ("name@sha256:...") -> "active" | "host" | "disk" | "loading"
    healthy: bool = True


@dataclass(frozen=True)
class PlacementConfig:
    eps: float = 0.25                     # within the bound: load + 1 <= (1 + eps) * (avg + 1)
    hot_requests_per_copy: float = 20.0   # req/s per copy above which the adapter gets another copy
    max_copies: int = 4
    heat_half_life_s: float = 10.0
    replica_pending_s: float = 5.0        # a copy asked for is not asked for again (elsewhere) for this long

    def __post_init__(self) -> None:
        if self.eps < 0:
            raise ValueError(f"eps is {self.eps}; it must be >= 0 (0 = strict balance, 0.25 = 25% headroom)")
        if self.hot_requests_per_copy <= 0:
            raise ValueError(f"hot_requests_per_copy is {self.hot_requests_per_copy}; it must be > 0")
        if self.max_copies < 1:
            raise ValueError(f"max_copies is {self.max_copies}; it must be >= 1")
        if self.heat_half_life_s <= 0:
            raise ValueError(f"heat_half_life_s is {self.heat_half_life_s}; it must be > 0")


def rendezvous_unit(key: str, worker_id: str) -> float:
    """-1 / ln(u) for u uniform in (0, 1) drawn from blake2b(key, worker id); times capacity it is the HRW score."""
    digest = hashlib.blake2b(f"{key}\x00{worker_id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 18446744073709551616.0      # 2**64: u in (0, 1)
    return -1.0 / math.log(u)


class Placement:
    """Per-request placement and hot-adapter replication. Not thread-safe; the router calls it from one loop."""

    def __init__(self, cfg: PlacementConfig) -> None:
        self.cfg = cfg
        self._decay = math.log(2.0) / cfg.heat_half_life_s          # per second
        self._units: dict[str, dict[str, float]] = {}              # key -> worker id -> rendezvous_unit
        self._heat: dict[str, list[float]] = {}                    # key -> [impulse sum, at time]
        self._records = 0
        self._pending: dict[tuple[str, str], float] = {}           # (key, worker id) -> copy asked for until

    # --- placement ----------------------------------------------------------------------------------------------

    def choose(self, key: str, workers: Sequence[WorkerView], *, region: str = "",
               exclude: Collection[str] = ()) -> list[WorkerView]:
        """Ordered candidates: [0] is the pick, the rest the retry order (see the module docstring)."""
        own, other = self._groups(workers, region, exclude)
        if not own:
            return []
        ordered = self._order(key, own)
        if other:
            ordered += self._order(key, other)
        return ordered

    def _groups(self, workers: Sequence[WorkerView], region: str,
                exclude: Collection[str]) -> tuple[list[WorkerView], list[WorkerView]]:
        own: list[WorkerView] = []
        other: list[WorkerView] = []
        for w in workers:
            if not w.healthy or (exclude and w.id in exclude):
                continue
            if not region or w.region == region:
                own.append(w)
            else:
                other.append(w)
        if not own:
            return other, []
        return own, other

    def _limit(self, group: Sequence[WorkerView]) -> float:
        """The highest load within the bound."""
        total = 0.0
        for w in group:
            total += w.load
        return (1.0 + self.cfg.eps) * (total / len(group) + 1.0) - 1.0 + _TOLERANCE

    def _order(self, key: str, group: list[WorkerView]) -> list[WorkerView]:
        if not key:
            return sorted(group, key=_by_load)
        units = self._units_for(key, group)
        limit = self._limit(group)
        holders = []
        rest = []
        over = []
        for w in group:
            score = w.capacity * units[w.id]
            tier = w.resident.get(key)
            if w.load > limit:
                over.append((w.load, TIER_RANK.get(tier, _UNKNOWN_TIER) if tier else 99, -score, w.id, w))
            elif tier is not None:
                holders.append((TIER_RANK.get(tier, _UNKNOWN_TIER), w.load, -score, w.id, w))
            else:
                rest.append((-score, w.id, w))
        out = []
        if holders:
            holders.sort()
            out = [h[-1] for h in holders]
        if rest:
            rest.sort()
            out += [r[-1] for r in rest]
        if over:
            over.sort()
            out += [o[-1] for o in over]
        return out

    def _units_for(self, key: str, group: Sequence[WorkerView]) -> dict[str, float]:
        units = self._units.get(key)
        if units is None:
            if len(self._units) >= _SCORE_CACHE_KEYS:
                del self._units[next(iter(self._units))]
            units = self._units[key] = {}
        for w in group:
            if w.id not in units:
                units[w.id] = rendezvous_unit(key, w.id)
        return units

    def rendezvous_order(self, key: str, workers: Sequence[WorkerView]) -> list[WorkerView]:
        """All of ``workers`` by descending rendezvous score for ``key`` (no load, health or residency)."""
        units = self._units_for(key, workers)
        return sorted(workers, key=lambda w: (-w.capacity * units[w.id], w.id))

    # --- heat and copies ----------------------------------------------------------------------------------------

    def record(self, key: str, now: float, n: int = 1) -> None:
        """``n`` requests for ``key`` at time ``now`` (seconds, any monotonic origin)."""
        entry = self._heat.get(key)
        if entry is None:
            self._heat[key] = [float(n), now]
        else:
            dt = now - entry[1]
            if dt > 0:                      # a late, out-of-order record counts without rewinding the clock
                entry[0] *= math.exp(-self._decay * dt)
                entry[1] = now
            entry[0] += n
        before, self._records = self._records, self._records + n
        if before // _HEAT_PRUNE_EVERY != self._records // _HEAT_PRUNE_EVERY:
            self._prune(now)

    def heat(self, key: str, now: float) -> float:
        """Exponentially decayed request rate of ``key`` in requests/s."""
        entry = self._heat.get(key)
        if entry is None:
            return 0.0
        dt = now - entry[1]
        value = entry[0] * math.exp(-self._decay * dt) if dt > 0 else entry[0]
        return value * self._decay

    def wanted_copies(self, key: str, now: float) -> int:
        """1 .. max_copies: one copy per ``hot_requests_per_copy`` req/s of heat."""
        per_copy = self.cfg.hot_requests_per_copy
        heat = self.heat(key, now)
        if heat <= per_copy:
            return 1
        return min(self.cfg.max_copies, math.ceil(heat / per_copy - _TOLERANCE))

    def replicas_to_add(self, key: str, workers: Sequence[WorkerView], now: float, *,
                        region: str = "") -> list[WorkerView]:
        """Workers that should load a copy of ``key`` now so that its holders reach ``wanted_copies``.

        Holders count at any tier, "loading" included, and so does a copy this method asked for less than
        ``replica_pending_s`` ago. New copies go to non-holders within the bound, in rendezvous order, in
        the same region group ``choose`` would use. Empty for a cold key and for the base model ("").
        """
        if not key:
            return []
        want = self.wanted_copies(key, now)
        if want <= 1:
            return []
        group, _ = self._groups(workers, region, ())
        if not group:
            return []
        if len(self._pending) > 4 * _HEAT_PRUNE_EVERY:
            self._pending = {k: t for k, t in self._pending.items() if t > now}
        have = 0
        candidates = []
        for w in group:
            if key in w.resident or self._pending.get((key, w.id), -math.inf) > now:
                have += 1
            else:
                candidates.append(w)
        need = want - have
        if need <= 0 or not candidates:
            return []
        limit = self._limit(group)
        units = self._units_for(key, group)
        candidates = [w for w in candidates if w.load <= limit]
        candidates.sort(key=lambda w: (-w.capacity * units[w.id], w.id))
        chosen = candidates[:need]
        until = now + self.cfg.replica_pending_s
        for w in chosen:
            self._pending[(key, w.id)] = until
        return chosen

    def _prune(self, now: float) -> None:
        decay = self._decay
        self._heat = {k: e for k, e in self._heat.items()
                      if e[0] * math.exp(-decay * max(0.0, now - e[1])) >= _HEAT_FORGET}


def _by_load(w: WorkerView) -> tuple[float, str]:
    return (w.load, w.id)
