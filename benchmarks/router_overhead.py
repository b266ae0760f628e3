"""Latency the router adds: the same streams through the router and straight to the worker, in one run.

    python benchmarks/router_overhead.py [--concurrency 1,10,100] [--rounds 10] [--tokens 8] [--plot-dir DIR]
    python benchmarks/router_overhead.py --secure   # also a second fleet with mTLS + tokens on every hop

The worker is a stand-in that answers at once (benchmarks/_stub_worker.py), so every microsecond measured is
transport and routing, not model time. Each round sends N concurrent Generate streams directly, through the
router, and through a bare 10-line Python gRPC pass-through (benchmarks/_bare_proxy.py: the floor for any proxy
written in Python). The order changes per round so that each path runs first equally often and follows every other
path equally often, with ``--settle`` seconds between paths: a path whose processes are still busy after its round
then slows each of the others alike (a plain rotation had "lookaside" run right after "bare proxy" three rounds in
four). Reported: per-stream completion latency p50/p99 and the extra over direct, pooled over all rounds, and the
extra paired by round (the median over rounds of a round's p50/p99 less direct's in that round, so that one round the
machine slowed does not carry the pooled p99). "lookaside" is the fourth path: the SDK's direct mode
(FleetClient(direct=True)) asks the router where to go and streams straight to the worker (issue 12's goal: it adds
p50 <= 1 ms and p99 <= 5 ms over direct at 1, 10 and 100 streams).

Each path's client keeps its channel open across rounds, as a service's client does (for lookaside: one
AsyncDirectRouter, whose Route answers and reports then come at their steady-state rate, not at the start of every
round); ``--fresh`` opens and closes it around each round instead, connection set-up included.

``--secure`` starts a second, identical fleet with mTLS and tokens on every hop (store, stand-in worker, router,
client; material from `adapterfleet auth init`) and measures both fleets in the same rotated rounds, so the
router's added latency with security on is compared with plaintext under the same noise (goal: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.common.embedded_redis import free_port  # noqa: E402
from adapterfleet.common.security import INSECURE, ClientSecurity, open_aio_channel, open_channel  # noqa: E402
from adapterfleet.sdk.direct_aio import AsyncDirectRouter  # noqa: E402
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from benchmarks import _plot  # noqa: E402
from benchmarks._design import balanced_orders, median_ci  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port, s3_and_store  # noqa: E402

KEY = "bench/a@sha256:" + "ab" * 32  # canonical: the router places it without asking the store


async def window(one, n: int) -> tuple[list[float], float]:
    """Warm the channels with 8 streams, then run ``n`` concurrently: (each one's latency, the event loop thread's
    CPU seconds over those ``n``). The CPU is what the path costs the client itself, a much steadier reading than
    latency on a box whose two cores also run the worker."""
    await asyncio.gather(*(one() for _ in range(8)))
    cpu = time.thread_time()
    latencies = list(await asyncio.gather(*(one() for _ in range(n))))
    return latencies, time.thread_time() - cpu


class Client:
    """One path's client as a service keeps it: its channel (lookaside: its ``AsyncDirectRouter`` too, the machinery
    of FleetClient(direct=True) at the same message level as the others) opened once and used by every round, so a
    round measures the streams, not a connection's set-up or a first Route. ``--fresh`` opens and closes it around
    each round instead (the design of the runs before 2026-12-05)."""

    def __init__(self, address: str, security: ClientSecurity, lookaside: bool):
        self.address, self.security, self.lookaside = address, security, lookaside
        self.request = worker_pb2.GenerateRequest(adapter=KEY, prompt_ids=[1, 2, 3], max_new_tokens=8)
        self._channel: grpc.aio.Channel | None = None
        self._direct: AsyncDirectRouter | None = None
        self._stub: worker_pb2_grpc.WorkerStub | None = None

    async def open(self) -> None:
        self._channel = open_aio_channel(self.address, self.security)
        if self.lookaside:  # asks the router's Route once per key, reuses it for its TTL, reports in the background
            self._direct = AsyncDirectRouter(router_pb2_grpc.RouterStub(self._channel), self.security)
        else:
            self._stub = worker_pb2_grpc.WorkerStub(self._channel)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._direct = self._stub = None

    async def one(self) -> float:
        t = time.perf_counter()
        if self._direct is not None:
            async for _ in self._direct.generate(self.request, timeout=None, metadata=()):
                pass
        else:
            assert self._stub is not None
            async for _ in self._stub.Generate(self.request):
                pass
        return time.perf_counter() - t


async def measure(clients: dict[str, Client], concurrency: list[int], rounds: int, settle: float, fresh: bool):
    """Every path's windows in balanced orders: ({n: {path: [each round's latencies]}}, {n: {path: [each round's
    loop CPU seconds]}})."""
    names = list(clients)
    orders = balanced_orders(len(names))
    by_round = {n: {name: [] for name in names} for n in concurrency}
    loop_cpu = {n: {name: [] for name in names} for n in concurrency}
    if not fresh:
        for client in clients.values():
            await client.open()
    try:
        for n in concurrency:
            for r in range(rounds):
                for i in orders[r % len(orders)]:
                    await asyncio.sleep(settle)
                    client = clients[names[i]]
                    if fresh:
                        await client.open()
                    try:
                        latencies, cpu = await window(client.one, n)
                    finally:
                        if fresh:
                            await client.close()
                    by_round[n][names[i]].append(latencies)
                    loop_cpu[n][names[i]].append(cpu)
    finally:
        for client in clients.values():
            await client.close()
    return by_round, loop_cpu


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="1,10,100")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--secure", action="store_true", help="also measure a fleet with mTLS and tokens on every hop")
    ap.add_argument("--settle", type=float, default=0.1,
                    help="seconds between paths, for the processes of the one before to go idle")
    ap.add_argument("--fresh", action="store_true",
                    help="open and close each path's channel around each round (connection set-up, and lookaside's "
                         "first Route and report, inside every round)")
    _plot.add_argument(ap)
    args = ap.parse_args()
    procs = []
    with contextlib.ExitStack() as stack:
        _, store = stack.enter_context(s3_and_store())
        try:
            wport, rport, bport = free_port(), free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, str(REPO / "benchmarks/_stub_worker.py"), store,
                                           str(wport), str(args.tokens)], env=ENV, stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, "-m", "adapterfleet.cli.main", "router", "serve", "--store",
                                           store, "--port", str(rport), "--log-level", "WARNING", "--insecure"],
                                          env=ENV, cwd=REPO, stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, str(REPO / "benchmarks/_bare_proxy.py"), str(bport),
                                           f"127.0.0.1:{wport}"], env=ENV, stdout=subprocess.DEVNULL))
            ports = [wport, rport, bport]
            targets = {"direct": f"127.0.0.1:{wport}", "router": f"127.0.0.1:{rport}",
                       "bare proxy": f"127.0.0.1:{bport}", "lookaside": f"127.0.0.1:{rport}"}
            security = dict.fromkeys(targets, INSECURE)
            if args.secure:
                sec, secure_ports = _secure_fleet(stack, procs, args.tokens)
                ports += secure_ports
                targets |= {"direct mTLS": f"127.0.0.1:{secure_ports[0]}",
                            "router mTLS": f"127.0.0.1:{secure_ports[1]}"}
                security |= {"direct mTLS": sec, "router mTLS": sec}
            for port in ports:
                _wait_port(port)
            time.sleep(1.5)  # the router sees the worker's first announcement
            clients = {name: Client(address, security[name], name == "lookaside")
                       for name, address in targets.items()}
            by_round, loop_cpu = asyncio.run(measure(clients, [int(x) for x in args.concurrency.split(",")],
                                                     args.rounds, args.settle, args.fresh))
            results = {n: {name: [x for one in per for x in one] for name, per in rounds.items()}
                       for n, rounds in by_round.items()}
            stats = router_pb2_grpc.RouterStub(grpc.insecure_channel(targets["router"])).Stats(
                router_pb2.RouterStatsRequest())
            if args.secure:
                with open_channel(targets["router mTLS"], security["router mTLS"]) as channel:
                    secure_stats = router_pb2_grpc.RouterStub(channel).Stats(router_pb2.RouterStatsRequest())
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    print(f"Generate streams of {args.tokens} tokens, {args.rounds} rounds, loopback, stand-in worker")
    print(f"{'streams':>8} {'path':>11} {'p50 ms':>8} {'p99 ms':>8} {'+p50':>7} {'+p99':>7}")
    for n, got in results.items():
        d50, d99 = pct(got["direct"], .5), pct(got["direct"], .99)
        for name in targets:
            p50, p99 = pct(got[name], .5), pct(got[name], .99)
            extra = "" if name == "direct" else f"{p50 - d50:+7.2f} {p99 - d99:+7.2f}"
            print(f"{n:>8} {name:>11} {p50:8.2f} {p99:8.2f} {extra}")
    print("goal: the router adds p50 <= 1 ms, p99 <= 5 ms at 100 concurrent streams (issue 12: lookaside adds that "
          "at 1, 10 and 100)")
    print("paired by round: the median over rounds of a round's p50 / p99 less direct's in the same round (a round "
          "the machine slowed counts once, not in every stream of the pooled p99)")
    print(f"{'streams':>8} {'path':>11} {'+p50':>7} {'+p99':>7}  95% CI of +p50 (sign test over rounds)")
    for n, rounds in by_round.items():
        for name in (x for x in targets if x != "direct" and "mTLS" not in x):
            diffs = [(pct(a, .5) - pct(b, .5), pct(a, .99) - pct(b, .99))
                     for a, b in zip(rounds[name], rounds["direct"], strict=True)]
            lo, hi = median_ci([d for d, _ in diffs])
            print(f"{n:>8} {name:>11} {statistics.median(d for d, _ in diffs):+7.2f} "
                  f"{statistics.median(d for _, d in diffs):+7.2f}  [{lo:+.2f}, {hi:+.2f}]")
    print("the client's event loop: CPU ms of its thread over a round's N streams (median over rounds), and the "
          "extra over direct paired by round:")
    print(f"{'streams':>8} {'path':>11} {'loop ms':>8} {'+paired':>8}")
    for n, cpus in loop_cpu.items():
        for name in (x for x in targets if "mTLS" not in x):
            extra = "" if name == "direct" else \
                f"{1000 * statistics.median(a - b for a, b in zip(cpus[name], cpus['direct'], strict=True)):+8.2f}"
            print(f"{n:>8} {name:>11} {1000 * statistics.median(cpus[name]):8.2f} {extra}")
    if args.secure:
        print("mTLS + tokens on every hop vs plaintext (router's added latency; whole stream through the router):")
        print(f"{'streams':>8} {'added p50':>14} {'added p99':>14} {'via router p50':>16} {'via router p99':>16}")
        for n, got in results.items():
            cells = []
            for q in (.5, .99):
                plain = pct(got["router"], q) - pct(got["direct"], q)
                secure = pct(got["router mTLS"], q) - pct(got["direct mTLS"], q)
                cells.append(f"{plain:5.2f}->{secure:5.2f}")
            for q in (.5, .99):
                plain, secure = pct(got["router"], q), pct(got["router mTLS"], q)
                cells.append(f"{plain:6.2f}->{secure:6.2f} {secure / plain:4.2f}x")
            print(f"{n:>8} {cells[0]:>14} {cells[1]:>14} {cells[2]:>16} {cells[3]:>16}")
        print(f"goal: within 10% of plaintext; the secure router counted {secure_stats.requests} requests, "
              f"{secure_stats.failures} failures")
    print(f"router counted {stats.requests} requests, {stats.failures} failures, mean direct "
          f"{1000 * statistics.mean(results[max(results)]['direct']):.2f} ms at {max(results)} streams")
    _plot.router_overhead(args.plot_dir, rounds=args.rounds, tokens=args.tokens, stats={
        n: {name: (pct(xs, .5), pct(xs, .99)) for name, xs in got.items() if "mTLS" not in name}
        for n, got in results.items()})


def _secure_fleet(stack: contextlib.ExitStack, procs: list, tokens: int) -> tuple[ClientSecurity, list[int]]:
    """A store, a stand-in worker and a router with mTLS and tokens on; returns (the client's security, [worker
    port, router port])."""
    from adapterfleet.cli.auth_cmd import init, mint

    m = init(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "security")
    tls = ("--tls-cert", str(m.cert), "--tls-key", str(m.key), "--tls-ca", str(m.ca))
    auth = ("--auth-public-key", str(m.issuer_public_key))
    _, store = stack.enter_context(s3_and_store(bucket="bench-secure", store_flags=(*tls, *auth)))
    wport, rport = free_port(), free_port()
    procs.append(subprocess.Popen([sys.executable, str(REPO / "benchmarks/_stub_worker.py"), store, str(wport),
                                   str(tokens), str(m.dir)], env=ENV, stdout=subprocess.DEVNULL))
    router_token = mint(m.issuer_key, ["*"], ["read", "serve"], 86400).token
    procs.append(subprocess.Popen([sys.executable, "-m", "adapterfleet.cli.main", "router", "serve", "--store", store,
                                   "--port", str(rport), "--log-level", "WARNING", *tls, *auth],
                                  env={**ENV, "ADAPTERFLEET_TOKEN": router_token}, cwd=REPO,
                                  stdout=subprocess.DEVNULL))
    return ClientSecurity(m.ca, m.cert, m.key, m.admin_token_file.read_text().strip()), [wport, rport]


if __name__ == "__main__":
    main()
