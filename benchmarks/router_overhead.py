"""Latency the router adds: the same streams through the router and straight to the worker, in one run.

    python benchmarks/router_overhead.py [--streams 100] [--rounds 10] [--tokens 8]

The worker is a stand-in that answers at once (benchmarks/_stub_worker.py), so every microsecond measured is
transport and routing, not model time. Each round sends `streams` concurrent Generate streams directly, then the
same through the router (alternating order per round, so machine noise hits both alike). Reported: per-stream
completion latency p50/p99, and the router's extra (router minus direct).
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

from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port, s3_and_store  # noqa: E402
from services.common.embedded_redis import free_port  # noqa: E402

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
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=8)
    args = ap.parse_args()
    procs = []
    with s3_and_store() as (_, store):
        try:
            wport, rport = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, str(REPO / "benchmarks/_stub_worker.py"), store,
                                           str(wport), str(args.tokens)], env=ENV, stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([sys.executable, "-m", "services.cli.main", "router", "serve", "--store",
                                           store, "--port", str(rport), "--log-level", "WARNING"], env=ENV,
                                          cwd=REPO, stdout=subprocess.DEVNULL))
            _wait_port(wport)
            _wait_port(rport)
            worker, router = f"127.0.0.1:{wport}", f"127.0.0.1:{rport}"
            time.sleep(1.5)  # the router sees the worker's first announcement
            direct, routed = [], []
            for r in range(args.rounds):
                order = [(direct, worker), (routed, router)]
                for sink, address in order if r % 2 == 0 else order[::-1]:
                    sink += asyncio.run(streams(address, args.streams))
            stats = router_pb2_grpc.RouterStub(grpc.insecure_channel(router)).Stats(router_pb2.RouterStatsRequest())
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    print(f"{args.streams} concurrent Generate streams x {args.rounds} rounds, {args.tokens} tokens each, loopback")
    print(f"  direct to worker : p50 {pct(direct, .5):7.2f} ms   p99 {pct(direct, .99):7.2f} ms")
    print(f"  through router   : p50 {pct(routed, .5):7.2f} ms   p99 {pct(routed, .99):7.2f} ms")
    print(f"  router adds      : p50 {pct(routed, .5) - pct(direct, .5):+7.2f} ms   "
          f"p99 {pct(routed, .99) - pct(direct, .99):+7.2f} ms   (goal: p50 <= 1 ms, p99 <= 5 ms)")
    print(f"  router counted {stats.requests} requests, {stats.failures} failures; "
          f"mean direct {1000 * statistics.mean(direct):.2f} ms")


if __name__ == "__main__":
    main()
