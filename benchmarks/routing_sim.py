"""Routing policy simulation: the real `adapterfleet.router.placement.Placement` against naive routers.

    python benchmarks/routing_sim.py [--quick] [--seed 0] [--eps 0.25] [--hot 20] [--copies 4]
                                     [--clients 32] [--ttl 0.5] [--announce 0.25] [--poll 0.5] [--report 0.1]

A discrete-event simulation of one region. Every policy sees the same trace (arrival times, adapters, service
times: common random numbers), so the differences are the policy's.

Fleet.    8 workers, each with 64 active adapter slots (an LRU of adapters; an entry in use by a request in flight
          or still loading is never evicted, as in services/worker/cache.py) and 32 execution slots (its batch):
          a request runs for an exponential service time (mean 1.0 s) once its adapter is active and a slot is
          free, else it waits in the worker's FIFO queue. load = requests on the worker (waiting for an adapter,
          queued or running); the router sees it exactly.
Traffic.  Poisson arrivals at 0.7 x 8 x 32 / 1.0 = 179.2 req/s, i.e. ~70% of the fleet's execution slots busy
          before cold-load waits; adapter of each request drawn from Zipf(s=1.1) over 1000 adapters
          (p(rank k) ~ k^-1.1; the most popular adapter is ~18% of requests).
Cold load. A request for an adapter its worker does not hold loads it (0.5 s, not using an execution slot; other
          requests for it join the wait) and evicts the least recently used idle entry: one cold load.
Policies. ours         Placement.choose()[0] per request, plus hot-adapter copies: after each request,
                       Placement.replicas_to_add() workers start loading a copy (counted as cold loads).
          round-robin  worker i mod 8.
          least-loaded fewest requests on the worker (ties: lowest index).
          resident-first  Ray Serve's model-multiplexing rule: among workers holding the adapter (active or
                       loading) the least loaded; else the worker with the fewest loaded adapters (ties: least
                       loaded, then lowest index).
          ours-direct  lookaside routing (FleetClient(direct=True)): the router never sees a request. Requests
                       come from ``--clients`` callers (each request from one drawn at random); a caller asks the
                       router's Route (Placement.choose over the router's *estimate* of load) on a miss of its
                       route cache and reuses the answer for ``--ttl`` s; one used past 3/4 of that is asked for
                       again at once, the request going on with the old answer (the SDK's refresh ahead of
                       expiry; such a Route counts no request, and the caller reports what it sends). The
                       router's estimate is the real adapterfleet.router.load.LoadEstimate fed as in production:
                       workers announce their load every ``--announce`` s (each at its own phase), the router
                       reads the registry every
                       ``--poll`` s (so it sees loads 0 .. announce + poll s old), a Route answer counts one
                       request on its first candidate at once, and callers report the other requests' starts and
                       every end ``U(0, --report)`` s late (their batching). Heat (and so copies) comes from Route
                       answers and those late reports. Residency, too, is only what the announcements said, plus
                       the keys the router itself sent somewhere (as Membership.expect does).
Measures (after a warm-up of the first 10% of requests, which fills the caches).
          hit rate     share of requests whose worker held the adapter *active* at arrival (joining a load in
                       progress is not a hit, and not a new cold load either).
          ideal        a static oracle with perfect knowledge of the measured trace: it pins the 8 x 64 = 512
                       adapters requested most often in it, one copy each, and never loads; its hit rate is the
                       share of requests for those adapters. Under independent Zipf draws no online cache
                       does better on average; it ignores load entirely.
          % ideal      hit rate / ideal hit rate.
          max/avg load time average of the busiest worker's load over the time average of the mean worker load,
                       both sampled at every arrival (Poisson arrivals see time averages): E[max_w load] /
                       E[mean_w load]. 1.0 is perfect balance.
          cold loads   adapter loads started in the measured window (for ours, hot-adapter copies included).
          latency      arrival to completion, mean and p99 (s).
Goals (the issue): hit rate >= 95% of ideal, max/avg load <= 1.25; for ours-direct too (issue 12: the placement
goals hold when the router sees load only through delayed reports).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapterfleet.common.tiers import ACTIVE, LOADING
from adapterfleet.router.load import LoadEstimate
from adapterfleet.router.placement import Placement, PlacementConfig, WorkerView
from adapterfleet.router.route import route_ttl
from adapterfleet.sdk.direct import REFRESH_AT

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from benchmarks import _plot  # noqa: E402 - needs the repo root the line above puts on sys.path (run as a script)


@dataclass(frozen=True)
class SimConfig:
    workers: int = 8
    slots: int = 64                  # active adapter slots per worker
    batch: int = 32                  # execution slots per worker
    adapters: int = 1000
    zipf_s: float = 1.1
    busy: float = 0.7                # offered load / execution capacity
    service_s: float = 1.0           # mean (exponential)
    load_s: float = 0.5              # cold load of one adapter
    requests: int = 1_000_000        # in the trace, warm-up included
    warmup: float = 0.1              # share of requests not measured
    seed: int = 0
    # lookaside routing (ours-direct)
    clients: int = 32                # callers, each with its own route cache
    ttl_s: float = 0.5               # a Route answer is reused this long (RouterConfig.route_ttl_s)
    announce_s: float = 0.25         # a worker announces its load this often while it changes
    poll_s: float = 0.5              # the router reads the registry this often (RouterConfig.poll_s)
    report_s: float = 0.1            # callers batch their reports (sdk/direct.py REPORT_EVERY_S): each arrives
                                     # U(0, report_s) late

    @property
    def rate(self) -> float:
        return self.busy * self.workers * self.batch / self.service_s


@dataclass
class Trace:
    keys: list[str]                  # adapter key of each adapter rank
    at: list[float]                  # arrival time of request i
    adapter: list[int]               # adapter index of request i
    service: list[float]             # service time of request i
    measured_from: int               # first measured request


def make_trace(cfg: SimConfig) -> Trace:
    rng = np.random.default_rng(cfg.seed)
    p = np.arange(1, cfg.adapters + 1, dtype=np.float64) ** -cfg.zipf_s
    p /= p.sum()
    keys = [f"tenant/adapter-{k:04d}@sha256:{hashlib.sha256(str(k).encode()).hexdigest()}"
            for k in range(cfg.adapters)]
    at = np.cumsum(rng.exponential(1.0 / cfg.rate, cfg.requests))
    adapter = rng.choice(cfg.adapters, size=cfg.requests, p=p)
    service = rng.exponential(cfg.service_s, cfg.requests)
    return Trace(keys, at.tolist(), adapter.tolist(), service.tolist(), int(cfg.requests * cfg.warmup))


def ideal_hit_rate(cfg: SimConfig, trace: Trace) -> float:
    measured = np.asarray(trace.adapter[trace.measured_from:])
    counts = np.sort(np.bincount(measured, minlength=cfg.adapters))[::-1]
    return float(counts[: cfg.workers * cfg.slots].sum() / len(measured))


@dataclass
class Worker:
    id: str
    lru: OrderedDict = field(default_factory=OrderedDict)     # adapter key -> ACTIVE | LOADING, oldest first
    refs: dict = field(default_factory=dict)                  # adapter key -> requests on this worker using it
    waiting: dict = field(default_factory=dict)               # adapter key -> requests waiting for its load
    queue: deque = field(default_factory=deque)               # requests waiting for an execution slot
    running: int = 0
    load: int = 0


@dataclass
class Result:
    name: str
    requests: int = 0
    hits: int = 0
    cold_loads: int = 0
    copies: int = 0                  # of which hot-adapter copies (ours)
    overfull: int = 0                # loads that found every LRU entry in use (cache briefly over capacity)
    sum_max: float = 0.0
    sum_mean: float = 0.0
    latencies: list = field(default_factory=list)


class Fleet:
    """The workers and the event loop; a policy picks a worker index per request."""

    def __init__(self, cfg: SimConfig, trace: Trace, result: Result) -> None:
        self.cfg = cfg
        self.trace = trace
        self.r = result
        self.workers = [Worker(f"w{i}") for i in range(cfg.workers)]
        self.events: list = []       # (time, seq, kind, worker index, payload)
        self.seq = 0
        self.measuring = False
        self.on_finish: Callable[[int, int, float], None] | None = None   # (worker, request, time)

    def at(self, t: float, call: Callable[[float], None]) -> None:
        """Run ``call(t)`` at simulated time ``t`` (a report arriving, an announcement, a registry poll)."""
        self._push(t, 2, -1, call)

    def run(self, pick: Callable[[int, str, float], int], after: Callable[[int, str, float], None] | None) -> Result:
        tr, ws, events = self.trace, self.workers, self.events
        n_workers = len(ws)
        for i, now in enumerate(tr.at):
            while events and events[0][0] <= now:
                self._handle(heapq.heappop(events))
            self.measuring = i >= tr.measured_from
            key = tr.keys[tr.adapter[i]]
            if self.measuring:
                loads = [w.load for w in ws]
                self.r.sum_max += max(loads)
                self.r.sum_mean += sum(loads) / n_workers
                self.r.requests += 1
            w = pick(i, key, now)
            self._arrive(w, i, key, now)
            if after is not None:
                after(i, key, now)
        while events:
            self._handle(heapq.heappop(events))
        return self.r

    def _push(self, t: float, kind: int, w: int, payload) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, w, payload))

    def _arrive(self, wi: int, i: int, key: str, now: float) -> None:
        w = self.workers[wi]
        w.load += 1
        w.refs[key] = w.refs.get(key, 0) + 1
        tier = w.lru.get(key)
        if tier == ACTIVE:
            if self.measuring:
                self.r.hits += 1
            w.lru.move_to_end(key)
            self._enqueue(wi, i, now)
        elif tier == LOADING:
            w.lru.move_to_end(key)
            w.waiting[key].append(i)
        else:
            self.start_load(wi, key, now)
            w.waiting[key].append(i)

    def start_load(self, wi: int, key: str, now: float) -> None:
        w = self.workers[wi]
        if len(w.lru) >= self.cfg.slots:
            for old, tier in w.lru.items():
                if tier == ACTIVE and not w.refs.get(old):
                    del w.lru[old]
                    w.refs.pop(old, None)
                    break
            else:
                if self.measuring:
                    self.r.overfull += 1
        w.lru[key] = LOADING
        w.waiting[key] = []
        if self.measuring:
            self.r.cold_loads += 1
        self._push(now + self.cfg.load_s, 1, wi, key)

    def _enqueue(self, wi: int, i: int, now: float) -> None:
        w = self.workers[wi]
        if w.running < self.cfg.batch:
            w.running += 1
            self._push(now + self.trace.service[i], 0, wi, i)
        else:
            w.queue.append(i)

    def _handle(self, ev) -> None:
        now, _, kind, wi, payload = ev
        if kind == 2:                                   # a scheduled callback
            payload(now)
            return
        w = self.workers[wi]
        if kind == 0:                                   # request payload finished
            i = payload
            key = self.trace.keys[self.trace.adapter[i]]
            w.running -= 1
            w.load -= 1
            w.refs[key] -= 1
            if i >= self.trace.measured_from:
                self.r.latencies.append(now - self.trace.at[i])
            if w.queue:
                w.running += 1
                j = w.queue.popleft()
                self._push(now + self.trace.service[j], 0, wi, j)
            if self.on_finish is not None:
                self.on_finish(wi, i, now)
        else:                                           # adapter payload loaded
            w.lru[payload] = ACTIVE
            for i in w.waiting.pop(payload, ()):
                self._enqueue(wi, i, now)


def run_policy(name: str, cfg: SimConfig, trace: Trace, pcfg: PlacementConfig) -> Result:
    result = Result(name)
    fleet = Fleet(cfg, trace, result)
    ws = fleet.workers
    n = len(ws)

    if name == "ours":
        placement = Placement(pcfg)
        views: list[WorkerView] = []

        def pick(i: int, key: str, now: float) -> int:
            views[:] = [WorkerView(w.id, w.id, "r", float(w.load), cfg.slots, w.lru) for w in ws]
            placement.record(key, now)
            return int(placement.choose(key, views, region="r")[0].id[1:])

        def after(i: int, key: str, now: float) -> None:
            # the views are the snapshot `pick` saw; the copy starts loading right away
            for v in placement.replicas_to_add(key, views, now, region="r"):
                wi = int(v.id[1:])
                if key not in ws[wi].lru:
                    fleet.start_load(wi, key, now)
                    if fleet.measuring:
                        result.copies += 1

        return fleet.run(pick, after)

    if name == "ours-direct":
        return run_direct(cfg, trace, pcfg, fleet, result)

    if name == "round-robin":
        return fleet.run(lambda i, key, now: i % n, None)

    if name == "least-loaded":
        return fleet.run(lambda i, key, now: min(range(n), key=lambda j: ws[j].load), None)

    if name == "resident-first":
        def pick_ray(i: int, key: str, now: float) -> int:
            holders = [j for j in range(n) if key in ws[j].lru]
            if holders:
                return min(holders, key=lambda j: ws[j].load)
            return min(range(n), key=lambda j: (len(ws[j].lru), ws[j].load))

        return fleet.run(pick_ray, None)

    raise ValueError(f"unknown policy {name!r}")


def run_direct(cfg: SimConfig, trace: Trace, pcfg: PlacementConfig, fleet: Fleet, result: Result) -> Result:
    """ours-direct: lookaside routing with the router's load seen only through announcements and late reports."""
    ws = fleet.workers
    n = len(ws)
    placement = Placement(pcfg)
    estimate = LoadEstimate()
    rng = np.random.default_rng(cfg.seed + 1)
    client_of = rng.integers(0, cfg.clients, size=len(trace.at))
    report_late = rng.uniform(0.0, cfg.report_s, size=2 * len(trace.at) + 1)
    late = iter(report_late.tolist())
    announced = [(0.0, {}) for _ in ws]          # what each worker last announced: (load, residency)
    seen: list[tuple[float, dict]] = [(-1.0, {}) for _ in ws]  # what the router read from the registry
    expected: list[dict[str, float]] = [{} for _ in ws]  # keys the router sent to each worker: loading until
    # per caller: key -> (worker, expires, refresh at)
    routes: list[dict[str, tuple[int, float, float]]] = [{} for _ in range(cfg.clients)]
    views: list[WorkerView] = []

    def announce(wi: int):
        def fire(now: float) -> None:
            w = ws[wi]
            announced[wi] = (float(w.load), dict(w.lru))
            if now < end:
                fleet.at(now + cfg.announce_s, fire)
        return fire

    def poll(now: float) -> None:
        for wi in range(n):
            if announced[wi][0] != seen[wi][0] or announced[wi][1] != seen[wi][1]:
                seen[wi] = announced[wi]
                estimate.announced(ws[wi].id, seen[wi][0], 0.0, now)
        if now < end:
            fleet.at(now + cfg.poll_s, poll)

    end = trace.at[-1]
    phase = np.random.default_rng(cfg.seed + 2).uniform(0.0, cfg.announce_s, size=n)
    for wi in range(n):
        fleet.at(float(phase[wi]), announce(wi))
    fleet.at(0.0, poll)

    def router_views(now: float) -> list[WorkerView]:
        out = []
        for wi, w in enumerate(ws):
            resident = seen[wi][1]
            mine = expected[wi]
            if mine:
                resident = dict(resident)
                for key, until in list(mine.items()):
                    if until < now or key in seen[wi][1]:
                        del mine[key]
                    else:
                        resident[key] = LOADING
            out.append(WorkerView(w.id, w.id, "r", estimate.load(w.id, now), cfg.slots, resident))
        return out

    def replicate(key: str, now: float) -> None:
        for v in placement.replicas_to_add(key, views, now, region="r"):
            wi = int(v.id[1:])
            expected[wi][key] = now + 5.0
            if key not in ws[wi].lru:
                fleet.start_load(wi, key, now)
                if fleet.measuring:
                    result.copies += 1

    def reported_start(wi: int, key: str):
        def fire(now: float) -> None:
            estimate.begun(ws[wi].id, 1, now)
            placement.record(key, now)
            views[:] = router_views(now)
            replicate(key, now)
        return fire

    def ask(key: str, now: float, refresh: bool = False) -> tuple[int, float]:
        """A Route call: placement on the router's estimate; (its first candidate, the answer's ttl). A refresh
        (RouteRequest.refresh) counts no request: the caller reports the ones it sends on the answer."""
        views[:] = router_views(now)
        if not refresh:
            placement.record(key, now)
        first = placement.choose(key, views, region="r")[0]
        wi = int(first.id[1:])
        if not refresh:
            estimate.begun(ws[wi].id, 1, now)        # the answer counts one request on its first candidate
        if key not in seen[wi][1]:
            expected[wi][key] = now + 5.0
        return wi, route_ttl(first, views, cfg.ttl_s)

    def pick(i: int, key: str, now: float) -> int:
        cache = routes[client_of[i]]
        hit = cache.get(key)
        if hit is not None and hit[1] > now:
            wi = hit[0]
            fleet.at(now + next(late), reported_start(wi, key))
            if now >= hit[2]:  # used past REFRESH_AT of its ttl: asked again "in the background" (Route.due)
                fresh, ttl = ask(key, now, refresh=True)
                cache[key] = (fresh, now + ttl, now + REFRESH_AT * ttl)
            return wi
        wi, ttl = ask(key, now)  # a miss: this request waits for the answer, and is the one it counted
        cache[key] = (wi, now + ttl, now + REFRESH_AT * ttl)
        if len(cache) > 4096:
            routes[client_of[i]] = {k: v for k, v in cache.items() if v[1] > now}
        return wi

    def after(i: int, key: str, now: float) -> None:
        replicate(key, now)

    def finished(wi: int, i: int, now: float) -> None:
        fleet.at(now + next(late), lambda t: estimate.ended(ws[wi].id, 1, t))

    fleet.on_finish = finished
    return fleet.run(pick, after)


POLICIES = ("ours", "ours-direct", "round-robin", "least-loaded", "resident-first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 60,000 requests (too short for the goals)")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=None, help="override PlacementConfig.eps")
    ap.add_argument("--hot", type=float, default=None, help="override PlacementConfig.hot_requests_per_copy")
    ap.add_argument("--copies", type=int, default=None, help="override PlacementConfig.max_copies")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--clients", type=int, default=SimConfig.clients, help="ours-direct: callers")
    ap.add_argument("--ttl", type=float, default=SimConfig.ttl_s, help="ours-direct: route reuse (s)")
    ap.add_argument("--announce", type=float, default=SimConfig.announce_s, help="ours-direct: announce period (s)")
    ap.add_argument("--poll", type=float, default=SimConfig.poll_s, help="ours-direct: registry poll period (s)")
    ap.add_argument("--report", type=float, default=SimConfig.report_s, help="ours-direct: report delay bound (s)")
    _plot.add_argument(ap)
    args = ap.parse_args()

    requests = args.requests or (60_000 if args.quick else SimConfig.requests)
    cfg = SimConfig(requests=requests, seed=args.seed, clients=args.clients, ttl_s=args.ttl,
                    announce_s=args.announce, poll_s=args.poll, report_s=args.report)
    overrides = {k: v for k, v in (("eps", args.eps), ("hot_requests_per_copy", args.hot),
                                   ("max_copies", args.copies)) if v is not None}
    pcfg = PlacementConfig(**overrides)
    trace = make_trace(cfg)
    ideal = ideal_hit_rate(cfg, trace)
    print(f"{cfg.workers} workers x {cfg.slots} slots, batch {cfg.batch}; "
          f"{cfg.adapters} adapters Zipf(s={cfg.zipf_s}); "
          f"{cfg.rate:.1f} req/s (busy {cfg.busy:.0%}), service {cfg.service_s} s, cold load {cfg.load_s} s; "
          f"{requests:,} requests ({trace.measured_from:,} warm-up), seed {cfg.seed}; duration {trace.at[-1]:.0f} s")
    print(f"ours: {pcfg}")
    print(f"ours-direct: {cfg.clients} callers, route ttl {cfg.ttl_s} s; load seen through announcements every "
          f"{cfg.announce_s} s read every {cfg.poll_s} s, and callers' reports up to {cfg.report_s} s late")
    print(f"offline ideal (static top-{cfg.workers * cfg.slots} oracle) hit rate: {ideal:.2%}\n")
    header = (f"{'policy':<15} {'hit rate':>8} {'% ideal':>8} {'max/avg load':>12} {'cold loads':>10} "
              f"{'(copies)':>8} {'lat mean':>8} {'lat p99':>8} {'sim s':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.policies.split(","):
        t0 = time.perf_counter()
        r = run_policy(name, cfg, trace, pcfg)
        took = time.perf_counter() - t0
        hit = r.hits / r.requests
        ratio = r.sum_max / r.sum_mean
        lat = np.asarray(r.latencies)
        rows.append((name, hit, ratio))
        print(f"{name:<15} {hit:>8.2%} {hit / ideal:>8.1%} {ratio:>12.3f} {r.cold_loads:>10,} "
              f"{r.copies if name.startswith('ours') else '':>8} {lat.mean():>8.3f} "
              f"{np.percentile(lat, 99):>8.3f} {took:>6.1f}"
              + (f"  (cache over capacity {r.overfull}x)" if r.overfull else ""))
    for name, hit, ratio in rows:
        if name.startswith("ours"):
            print(f"\ngoals for {name}: hit rate >= 95% of ideal: {hit / ideal:.1%} "
                  f"({'met' if hit / ideal >= 0.95 else 'MISSED'}); max/avg load <= 1.25: {ratio:.3f} "
                  f"({'met' if ratio <= 1.25 else 'MISSED'})")
    _plot.routing_sim(args.plot_dir, rows=rows, ideal=ideal, requests=requests, seed=cfg.seed)


if __name__ == "__main__":
    main()
