"""Soak: a whole local fleet under mixed load for minutes; errors by status, latency and every process's RSS over time.

    python benchmarks/soak.py [--minutes 10]     # the soak (plot: benchmarks/plots/soak.png)
    python benchmarks/soak.py --quick            # ~1 minute, same mix, shorter periods
    python benchmarks/soak.py --cycles 10000     # instead: adapter load/unload cycles on one worker, RSS after

The fleet is real processes on free ports: redis-server, moto's S3 server, ``adapterfleet store serve``, two
``adapterfleet worker serve`` (4 active slots; 1 MB host and 1 MB disk tiers by default, ``--host-mb``/``--disk-mb``:
far fewer than the 48 adapters of 32 KB, so every tier evicts all the time) and ``adapterfleet router serve``.
Client threads send Score (70%) and greedy Generate (30%) through the router, each with a ``--timeout`` deadline,
over Zipf-distributed adapters: by alias (``@prod``, sometimes a 90/10 canary), by latest version and by digest.
Meanwhile the soak pushes new versions, walks aliases canary -> full by compare-and-set, and every
``--restart-every`` minutes sends SIGTERM to worker-1 and starts it again (worker-0 runs throughout, so its RSS
growth is the whole run's). RSS is VmRSS from /proc/PID/status; growth is from the end of the warm-up (the first
fifth of the run) to the end.

Each worker runs with OMP_NUM_THREADS=1: two torch processes that each spin a pool over every core of a small
machine slow each other down several-fold (see tests/faults/procs.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.common.channel import CHANNEL_OPTIONS  # noqa: E402
from adapterfleet.common.embedded_redis import free_port  # noqa: E402
from adapterfleet.common.errors import AdapterFleetError  # noqa: E402
from adapterfleet.store.client import StoreClient  # noqa: E402
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from benchmarks import _plot  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port  # noqa: E402
from tests.faults.procs import WorkerProcess, load_unload_cycles, rss_kib  # noqa: E402
from tests.helpers.synthetic import write_adapter  # noqa: E402

RANK = 64  # synthetic q_proj adapters for the tiny Llama: 32 KB each


# --- the fleet --------------------------------------------------------------------------------------------------------


class Fleet:
    """redis-server, moto, store, N workers, router: every one a child process, all stopped by close()."""

    def __init__(self, work: Path, base: Path, workers: int, *, max_slots: int = 4, router: bool = True,
                 host_mb: int = 1, disk_mb: int = 1, log_level: str = "WARNING"):
        self.work, self.base, self.max_slots, self.log_level = work, base, max_slots, log_level
        self.host_mb, self.disk_mb = host_mb, disk_mb
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, WorkerProcess] = {}
        self.restarts: list[tuple[float, str]] = []
        try:
            self._start(workers, router)
        except BaseException:
            self.close()
            raise

    def _spawn(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it; closed with the fleet
        self.procs[name] = subprocess.Popen(args, stderr=log, env=ENV, cwd=REPO, **kw)
        return self.procs[name]

    def _serve(self, name: str, args: list[str], ready: str) -> str:
        """Start ``adapterfleet <args> --port 0`` and return the address from its "listening" line."""
        proc = self._spawn(name, [sys.executable, "-u", "-m", "adapterfleet.cli.main", *args, "--port", "0",
                                  "--insecure", "--metrics-port", "0", "--log-format", "text",
                                  "--log-level", self.log_level],
                           stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if ready not in line:
            raise RuntimeError(f"{name} did not start: {line!r}; see {self.work / (name + '.log')}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        return line.split(" on ", 1)[1].split()[0].rstrip(";")

    def _start(self, workers: int, router: bool) -> None:
        redis_port, s3_port = free_port(), free_port()
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise SystemExit("redis-server is not on PATH")
        self._spawn("redis", [redis_bin, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL)
        self._spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                    stdout=subprocess.DEVNULL)
        _wait_port(redis_port)
        _wait_port(s3_port)
        self.store = self._serve("store", ["store", "serve", "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
                                           "--s3-endpoint", f"http://127.0.0.1:{s3_port}", "--bucket", "soak",
                                           "--data-dir", str(self.work / "store")], "store listening")
        pending = [self._worker(f"worker-{i}") for i in range(workers)]
        for w in pending:
            w.wait_ready()
        self.router = self._serve("router", ["router", "serve", "--store", self.store], "router listening") \
            if router else ""

    def _worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess(name, store=self.store, base_model=self.base, disk_dir=self.work / name,
                          log_dir=self.work, max_slots=self.max_slots, drain_s=30, threads=1,
                          extra=["--host-cache-mb", str(self.host_mb), "--disk-cache-mb", str(self.disk_mb),
                                 "--log-level", self.log_level])
        self.workers[name] = w
        return w

    def restart(self, name: str, at: float) -> None:
        """SIGTERM (the worker drains), wait for it to exit, start it again and wait until it listens."""
        old = self.workers[name]
        old.terminate()
        old.wait(60)
        old.close()
        self.restarts.append((at, name))
        self._worker(name).wait_ready()

    def pids(self) -> dict[str, int]:
        out = {name: p.pid for name, p in self.procs.items() if p.poll() is None}
        out.update({name: w.pid for name, w in self.workers.items() if w.alive})
        return out

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        for name in ("router", "store", "moto", "redis"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


# --- the load ---------------------------------------------------------------------------------------------------------


@dataclass
class Call:
    t: float          # seconds since the start, when it ended
    kind: str         # "score" | "generate"
    code: str         # "OK" or the status name
    seconds: float


@dataclass
class Catalog:
    """What the clients may ask for, updated by the pushers and alias movers (under ``lock``)."""

    names: list[str]
    digests: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    prod: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


def client_loop(router: str, catalog: Catalog, calls: list[Call], stop: threading.Event, t0: float, seed: int,
                errors: Counter, timeout: float) -> None:
    api = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(router, options=CHANNEL_OPTIONS))
    rng = random.Random(seed)
    weights = zipf_weights(len(catalog.names))
    while not stop.is_set():
        i = rng.choices(range(len(catalog.names)), weights)[0]
        name = catalog.names[i]
        style = rng.random()
        with catalog.lock:
            ref = (f"{name}@prod" if style < 0.5 else name if style < 0.8 else catalog.digests[i])
        started = time.perf_counter()
        kind = "score" if rng.random() < 0.7 else "generate"
        try:
            if kind == "score":
                api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1 + rng.randrange(120) for _ in range(12)],
                                                  routing_key=f"user-{rng.randrange(1000)}"), timeout=timeout)
            else:
                list(api.Generate(worker_pb2.GenerateRequest(
                    adapter=ref, prompt_ids=[1 + rng.randrange(120) for _ in range(8)], max_new_tokens=16,
                    routing_key=f"user-{rng.randrange(1000)}"), timeout=timeout))
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
            errors[(code, (err.details() or "")[:160])] += 1
        calls.append(Call(time.monotonic() - t0, kind, code, time.perf_counter() - started))


def pusher_loop(client: StoreClient, catalog: Catalog, work: Path, every: float, stop: threading.Event,
                log: list[str], seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.wait(every):
        name = rng.choice(catalog.names)
        n += 1
        src = write_adapter(work / f"push{n}", r=RANK, seed=10_000 + n, targets=("q_proj",))
        try:
            m = client.push_dir(src, name).manifest
            with catalog.lock:
                catalog.versions[name] = m.version
        except AdapterFleetError as err:
            log.append(f"push {name}: {err.code}: {err.message[:160]}")
        shutil.rmtree(src, ignore_errors=True)


def alias_loop(client: StoreClient, catalog: Catalog, every: float, stop: threading.Event, log: list[str],
               moves: list[int], seed: int) -> None:
    """prod: {old: 100} -> canary {old: 90, new: 10} -> {new: 100}, each step a compare-and-set."""
    rng = random.Random(seed)
    while not stop.wait(every):
        with catalog.lock:
            movable = {name: (current, catalog.versions[name]) for name, current in catalog.prod.items()
                       if len(current) == 2 or catalog.versions[name] > current[0][0]}
        if not movable:
            continue
        name = rng.choice(sorted(movable))
        current, latest = movable[name]
        if len(current) == 2:  # the canary is judged good: all traffic to the new version
            target: tuple[tuple[int, int], ...] = ((max(v for v, _ in current), 100),)
        else:
            target = ((current[0][0], 90), (latest, 10))
        try:
            client.set_alias(name, "prod", target, expect=current)
            with catalog.lock:
                catalog.prod[name] = target
            moves[0] += 1
        except AdapterFleetError as err:
            log.append(f"alias {name}: {err.code}: {err.message[:160]}")


def sampler_loop(fleet: Fleet, every: float, stop: threading.Event, t0: float,
                 rss: dict[str, list[tuple[float, float]]]) -> None:
    while True:
        now = time.monotonic() - t0
        for name, pid in fleet.pids().items():
            kib = rss_kib(pid)
            if kib:
                rss.setdefault(name, []).append((now, kib / 1024))
        if stop.wait(every):
            return


# --- reporting --------------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def growth(series: list[tuple[float, float]], warm_until: float, since: float = 0.0,
           until: float = float("inf")) -> tuple[float, float, float]:
    """(MiB at the end of the warm-up, MiB at the end, growth) over the samples taken in [``since``, ``until``)."""
    own = [(t, v) for t, v in series if since <= t < until]
    warm = [v for t, v in own if t >= warm_until] or [v for _, v in own]
    return warm[0], own[-1][1], (own[-1][1] - warm[0]) / warm[0]


def windows(calls: list[Call], width: float, end: float) -> list[tuple[float, int, int, float, float]]:
    """Per window: (middle, requests, errors, p50 ms, p99 ms)."""
    out = []
    t = 0.0
    while t < end:
        inside = [c for c in calls if t <= c.t < t + width]
        ms = [c.seconds * 1000 for c in inside if c.code == "OK"]
        out.append((t + width / 2, len(inside), sum(c.code != "OK" for c in inside), pct(ms, 0.5), pct(ms, 0.99)))
        t += width
    return out


def plot_soak(plot_dir: Path, calls: list[Call], rss: dict[str, list[tuple[float, float]]],
              restarts: list[tuple[float, str]], end: float, warm_until: float, title: str) -> Path | None:
    plt = _plot._pyplot()  # noqa: SLF001 - the benchmarks' shared plot style
    if plt is None:
        return None
    width = max(5.0, end / 60)
    win = windows(calls, width, end)
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True)
    xs = [w[0] for w in win]
    ax1.plot(xs, [w[1] / width for w in win], color=_plot.OURS, label="requests/s")
    ax1.set_ylabel("requests / s")
    ax1.set_ylim(bottom=0)
    errs = ax1.twinx()  # failed requests per window, on their own scale
    errs.bar(xs, [w[2] for w in win], width=width * 0.8, color="#c62828", alpha=0.5, label="failed requests")
    errs.set_ylabel(f"failed per {width:g} s", color="#c62828")
    errs.set_ylim(0, max(4, *(w[2] for w in win)) * 1.2)
    errs.legend(loc="upper left")
    ax1.set_zorder(errs.get_zorder() + 1)  # the request line over the bars
    ax1.patch.set_visible(False)
    ax1.set_title(title)
    for kind, color in (("score", _plot.OURS), ("generate", _plot.ALT)):
        per = windows([c for c in calls if c.kind == kind], width, end)
        ax2.plot([w[0] for w in per], [w[3] for w in per], color=color, label=f"{kind} p50")
        ax2.plot([w[0] for w in per], [w[4] for w in per], color=color, linestyle="--", label=f"{kind} p99")
    ax2.set_ylabel("latency, ms")
    ax2.set_yscale("log")
    colors = {"store": _plot.OURS, "router": _plot.ALT, "worker-0": _plot.GOAL, "worker-1": "#6a1b9a",
              "redis": _plot.BASE, "moto": _plot.MUTED}
    for name, series in sorted(rss.items()):
        ax3.plot([t for t, _ in series], [v for _, v in series], color=colors.get(name), label=name)
    ax3.set_ylabel("RSS, MiB")
    ax3.set_xlabel("seconds")
    for ax in (ax1, ax2, ax3):
        ax.axvspan(0, warm_until, color=_plot.MUTED, alpha=0.25, lw=0)
        for at, _ in restarts:
            ax.axvline(at, color="#c62828", lw=0.8, linestyle=":")
        ax.legend(loc="upper right", ncol=3)
    ax3.annotate("grey: warm-up; red dotted: SIGTERM + restart of worker-1", (0.01, 0.02),
                 xycoords="axes fraction", fontsize=7)
    return _plot._save(plt, fig, plot_dir, "soak")  # noqa: SLF001


# --- the modes --------------------------------------------------------------------------------------------------------


def make_base(work: Path) -> Path:
    from transformers.utils import logging as hf_logging

    from tests.helpers.models import make_base_model

    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_base_model("llama", work / "base", seed=0, max_position_embeddings=256)


def soak(args: argparse.Namespace, work: Path) -> None:
    minutes = 1.0 if args.quick else args.minutes
    duration = minutes * 60
    restart_every = (args.restart_every or (0.4 if args.quick else 3.0)) * 60
    push_every = args.push_every or (4.0 if args.quick else 15.0)
    alias_every = args.alias_every or (5.0 if args.quick else 20.0)
    sample_every = 2.0 if args.quick else 5.0
    warm_until = duration / 5
    load0 = os.getloadavg()
    print(f"soak: {minutes:g} min, {args.adapters} adapters of 32 KB over 2 workers x 4 slots (host tier "
          f"{args.host_mb} MB, disk tier {args.disk_mb} MB each), {args.clients} clients, "
          f"push every {push_every:g}s, alias move every {alias_every:g}s, worker-1 restarted every "
          f"{restart_every / 60:g} min; load average at start {load0[0]:.1f} on {os.cpu_count()} cores")
    base = make_base(work)
    fleet = Fleet(work, base, workers=2, host_mb=args.host_mb, disk_mb=args.disk_mb, log_level=args.log_level)
    try:
        client = StoreClient(fleet.store)
        names = [f"soak/a{i:02d}" for i in range(args.adapters)]
        catalog = Catalog(names)
        for i, name in enumerate(names):
            m = client.push_dir(write_adapter(work / f"src{i}", r=RANK, seed=i, targets=("q_proj",)), name,
                                alias="prod").manifest
            catalog.digests.append(str(m.key))
            catalog.versions[name] = m.version
            catalog.prod[name] = ((m.version, 100),)
        calls: list[Call] = []
        errors: Counter = Counter()
        log: list[str] = []
        moves = [0]
        rss: dict[str, list[tuple[float, float]]] = {}
        stop, stop_sampler = threading.Event(), threading.Event()
        t0 = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(fleet.router, catalog, calls, stop, t0, c, errors,
                                                                 args.timeout))
                   for c in range(args.clients)]
        threads += [threading.Thread(target=pusher_loop, args=(client, catalog, work, push_every, stop, log, 1)),
                    threading.Thread(target=alias_loop, args=(client, catalog, alias_every, stop, log, moves, 2))]
        sampler = threading.Thread(target=sampler_loop, args=(fleet, sample_every, stop_sampler, t0, rss))
        sampler.start()
        for t in threads:
            t.start()
        next_restart = restart_every
        while (now := time.monotonic() - t0) < duration:
            if now >= next_restart and duration - now > 20:
                fleet.restart("worker-1", now)
                print(f"  {now:5.0f}s  worker-1 restarted (SIGTERM, drained, started again)")
                next_restart += restart_every
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(180)
        end = time.monotonic() - t0
        stop_sampler.set()
        sampler.join(30)
        router_stats = router_pb2_grpc.RouterStub(grpc.insecure_channel(fleet.router)).Stats(
            router_pb2.RouterStatsRequest(), timeout=10)
        versions = sum(catalog.versions.values())
    finally:
        fleet.close()
    load1 = os.getloadavg()
    report(calls, errors, log, rss, fleet.restarts, end, warm_until, moves[0], versions, router_stats)
    print(f"load average: {load0[0]:.1f} at start, {load1[0]:.1f} at the end ({os.cpu_count()} cores, shared): "
          "latencies are this machine's, not the fleet's")
    plot_soak(args.plot_dir, calls, rss, fleet.restarts, end, warm_until,
              f"soak: {end / 60:.1f} min, {len(calls)} requests, "
              f"{sum(c.code != 'OK' for c in calls)} errors, {len(fleet.restarts)} worker restarts")


def report(calls: list[Call], errors: Counter, log: list[str], rss: dict[str, list[tuple[float, float]]],
           restarts: list[tuple[float, str]], end: float, warm_until: float, moves: int, versions: int,
           router_stats) -> None:
    codes = Counter(c.code for c in calls)
    print(f"\n{len(calls)} requests in {end:.0f}s ({len(calls) / end:.1f}/s): " +
          ", ".join(f"{code} {n}" for code, n in codes.most_common()))
    for (code, details), n in errors.most_common(10):
        print(f"  {n} x {code}: {details}")
    failed = [c for c in calls if c.code != "OK"]
    if failed:
        print("  failed at (s, started at): " + ", ".join(f"{c.t:.0f} ({c.t - c.seconds:.0f})" for c in failed[:12]))
    print(f"store: {versions} versions in all after the pushes, {moves} alias moves; {len(log)} push/alias errors")
    for line in log[:10]:
        print(f"  {line}")
    print(f"router: {router_stats.requests} requests, {router_stats.retries} retried attempts, "
          f"{router_stats.failures} failures, affinity hit rate {router_stats.affinity_hit_rate:.2f}")
    print(f"\n{'':10}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'p99/p50':>9}{'max s':>8}{'> 1 s':>7}")
    for kind in ("score", "generate"):
        ok = [c.seconds * 1000 for c in calls if c.kind == kind and c.code == "OK"]
        n = sum(c.kind == kind for c in calls)
        bad = sum(c.kind == kind and c.code != "OK" for c in calls)
        p50, p99 = pct(ok, 0.5), pct(ok, 0.99)
        slowest = max((c.seconds for c in calls if c.kind == kind), default=0.0)
        over = sum(c.kind == kind and c.seconds > 1.0 for c in calls)
        print(f"{kind:10}{n:>10}{bad:>8}{p50:>9.1f}{p99:>9.1f}{p99 / p50:>9.1f}{slowest:>8.1f}{over:>7}")
    idle = [w for w in windows(calls, 5.0, end) if w[1] == 0]
    if idle:
        print(f"{len(idle)} windows of 5 s with no request finished (a stall), from {idle[0][0] - 2.5:.0f}s")
    print(f"\nRSS (MiB) from the end of the warm-up ({warm_until:.0f}s) to the end; a restarted worker over its "
          "longest (then latest) life between restarts, from the end of that life's first fifth")
    print(f"{'process':10}{'warm':>9}{'end':>9}{'max':>9}{'growth':>9}")
    for name, series in sorted(rss.items()):
        starts = [0.0, *sorted(at for at, who in restarts if who == name)]
        lives = list(zip(starts, [*starts[1:], end], strict=True))
        since, until = max(lives, key=lambda life: (life[1] - life[0], life[0]))
        warm_at = warm_until if since == 0.0 else since + (until - since) / 5
        warm, last, g = growth(series, warm_at, since, until)
        peak = max(v for t, v in series if since <= t < until)
        note = f"  (its life from {since:.0f}s to {until:.0f}s)" if len(lives) > 1 else ""
        print(f"{name:10}{warm:>9.1f}{last:>9.1f}{peak:>9.1f}{g:>+9.1%}{note}")


def cycles(args: argparse.Namespace, work: Path) -> None:
    load0 = os.getloadavg()
    print(f"load/unload cycles: {args.cycles} after {args.warmup} warm-up cycles, over {args.adapters} adapters, one "
          f"worker process; load average at start {load0[0]:.1f} on {os.cpu_count()} cores")
    fleet = Fleet(work, make_base(work), workers=1, router=False)
    try:
        client = StoreClient(fleet.store)
        refs = [str(client.push_dir(write_adapter(work / f"src{i}", r=8 * (1 + i % 8), seed=i, targets=("q_proj",)),
                                    f"cycle/a{i:02d}").manifest.key) for i in range(args.adapters)]
        worker = fleet.workers["worker-0"]
        started = time.monotonic()

        def progress(done: int, kib: int) -> None:
            if done % max(1, args.cycles // 10) == 0:
                print(f"  {done:>6} cycles  RSS {kib / 1024:7.1f} MiB  ({time.monotonic() - started:.0f}s)")

        r = load_unload_cycles(worker.stub(), worker.pid, refs, args.cycles, warmup=args.warmup, samples=100,
                               on_sample=progress)
    finally:
        fleet.close()
    print(f"\nRSS after warm-up {r.rss_warm_kib / 1024:.1f} MiB -> after {r.cycles} cycles {r.rss_end_kib / 1024:.1f} "
          f"MiB: growth {r.growth:+.2%} (max {max(v for _, v in r.samples) / 1024:.1f} MiB); {r.seconds:.0f}s, "
          f"{1000 * r.seconds / r.cycles:.1f} ms per cycle; load average at the end {os.getloadavg()[0]:.1f}")
    plot_cycles(args.plot_dir, r.samples, r.growth)


def plot_cycles(plot_dir: Path, samples: list[tuple[int, int]], g: float) -> Path | None:
    plt = _plot._pyplot()  # noqa: SLF001 - the benchmarks' shared plot style
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([n for n, _ in samples], [k / 1024 for _, k in samples], color=_plot.OURS, label="worker RSS")
    warm = samples[0][1] / 1024
    ax.axhline(warm * 1.05, color=_plot.GOAL, linestyle="--", lw=1, label="goal: +5% over warm")
    ax.set_ylim(warm * 0.9, max(warm * 1.1, max(k for _, k in samples) / 1024 * 1.02))
    ax.set_xlabel("load/unload cycles after warm-up")
    ax.set_ylabel("RSS, MiB")
    ax.set_title(f"adapter load/unload cycles on one worker: RSS growth {g:+.2%}")
    ax.legend(loc="lower right")
    return _plot._save(plt, fig, plot_dir, "soak_cycles")  # noqa: SLF001


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="~1 minute")
    ap.add_argument("--adapters", type=int, default=48)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=15.0, help="each request's deadline, seconds")
    ap.add_argument("--restart-every", type=float, default=0.0, help="minutes (default 3; --quick 0.4)")
    ap.add_argument("--push-every", type=float, default=0.0, help="seconds (default 15; --quick 4)")
    ap.add_argument("--alias-every", type=float, default=0.0, help="seconds (default 20; --quick 5)")
    ap.add_argument("--host-mb", type=int, default=1, help="each worker's host-RAM tier (default 1: ~30 adapters)")
    ap.add_argument("--disk-mb", type=int, default=1, help="each worker's disk tier (default 1: ~30 adapters)")
    ap.add_argument("--cycles", type=int, default=0, help="instead of the soak: this many load/unload cycles")
    ap.add_argument("--warmup", type=int, default=200, help="--cycles: warm-up cycles before the first RSS sample")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches)")
    ap.add_argument("--log-level", default="WARNING", help="of every part's log (in the work directory)")
    _plot.add_argument(ap)
    args = ap.parse_args(argv)
    if args.cycles and args.adapters == ap.get_default("adapters"):
        args.adapters = 16
    work = Path(tempfile.mkdtemp(prefix="af-soak-"))
    try:
        (cycles if args.cycles else soak)(args, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
