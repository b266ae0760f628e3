"""Latency the router adds: the same streams through the router and straight to the worker, in one run.

    python benchmarks/router_overhead.py [--concurrency 1,10,100] [--rounds 10] [--tokens 8] [--plot-dir DIR]

The worker is a stand-in that answers at once (benchmarks/_stub_worker.py), so every microsecond measured is
transport and routing, not model time. Each round sends N concurrent Generate streams directly, through the
router, and through a bare 10-line Python gRPC pass-through (benchmarks/_bare_proxy.py: the floor for any proxy
written in Python), rotating the order per round so machine noise hits all three alike. Reported: per-stream
completion latency p50/p99 and the extra over direct.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.common.embedded_redis import free_port  # noqa: E402
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from benchmarks import _plot  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port, s3_and_store  # noqa: E402

KEY = "bench/a@sha256:" + "ab" * 32  # canonical: the router places it without asking the store


async def streams(address: str, n: int) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        req = worker_pb2.GenerateRequest(adapter=KEY, prompt_ids=[1, 2, 3], max_new_tokens=8)

        async def one() -> float:
            t = time.perf_counter()
            async for _ in stub.Generate(req):
                pass
            return time.perf_counter() - t

        await asyncio.gather(*(one() for _ in range(8)))  # warm the channel
        return list(await asyncio.gather(*(one() for _ in range(n))))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", default="1,10,100")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=8)
    _plot.add_argument(ap)
    args = ap.parse_args()
    procs = []
    with s3_and_store() as (_, store):
        try:
            wport, rport, bport = free_port(), free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, str(REPO / "benchmarks/_stub_worker.py"), store,
                                           str(wport), str(args.tokens)], env=ENV, stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, "-m", "adapterfleet.cli.main", "router", "serve", "--store",
                                           store, "--port", str(rport), "--log-level", "WARNING"], env=ENV,
                                          cwd=REPO, stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, str(REPO / "benchmarks/_bare_proxy.py"), str(bport),
                                           f"127.0.0.1:{wport}"], env=ENV, stdout=subprocess.DEVNULL))
            for port in (wport, rport, bport):
                _wait_port(port)
            time.sleep(1.5)  # the router sees the worker's first announcement
            targets = {"direct": f"127.0.0.1:{wport}", "router": f"127.0.0.1:{rport}",
                       "bare proxy": f"127.0.0.1:{bport}"}
            results = {}
            for n in (int(x) for x in args.concurrency.split(",")):
                got = {name: [] for name in targets}
                names = list(targets)
                for r in range(args.rounds):
                    for name in names[r % 3:] + names[:r % 3]:
                        got[name] += asyncio.run(streams(targets[name], n))
                results[n] = got
            stats = router_pb2_grpc.RouterStub(grpc.insecure_channel(targets["router"])).Stats(
                router_pb2.RouterStatsRequest())
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
    print("goal: the router adds p50 <= 1 ms, p99 <= 5 ms at 100 concurrent streams")
    print(f"router counted {stats.requests} requests, {stats.failures} failures, mean direct "
          f"{1000 * statistics.mean(results[max(results)]['direct']):.2f} ms at {max(results)} streams")
    _plot.router_overhead(args.plot_dir, rounds=args.rounds, tokens=args.tokens, stats={
        n: {name: (pct(xs, .5), pct(xs, .99)) for name, xs in got.items()} for n, got in results.items()})


if __name__ == "__main__":
    main()
