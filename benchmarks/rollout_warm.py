"""Warm before switch: the p99 of the first 50 requests after each rollout step vs the steady-state p99.

    python benchmarks/rollout_warm.py [--steps 50,100] [--first 50] [--steady 300] [--concurrency 4]

A real fleet: redis-server, moto's S3, the store process (its rollout controller), two in-process workers and a
router; a Llama (hidden 512, 4 layers) and two rank-64 all-linear PEFT adapters. The old version serves steady
traffic (Score through the router, distinct routing keys, ``--concurrency`` callers); then a rollout starts
(`min_requests 0`, a short interval). As soon as the store reports a step, the next ``--first`` requests are timed,
then ``--steady`` more: the ratio p99(first) / p99(steady) is the cost a step's first requests pay. Run twice,
interleaved: with warm-before-switch (the default) and with ``--no-warm`` (the new version loads cold on the
request path). Goal: within 1.2x with warm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from adapterfleet.router.config import RouterConfig  # noqa: E402
from adapterfleet.sdk.fleet import FleetClient  # noqa: E402
from adapterfleet.sdk.rollouts import Rollouts  # noqa: E402
from adapterfleet.store.client import StoreClient  # noqa: E402
from adapterfleet.worker.config import WorkerConfig  # noqa: E402
from benchmarks._fleet import s3_and_store  # noqa: E402
from tests.helpers.models import make_base_model, make_peft_adapter  # noqa: E402
from tests.helpers.servers import WorkerHandle, start_router  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA = dict(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4)
RANK = 64  # ~12 MB of adapter: a cold load (S3 GET, sha256, parse, install) is visible next to a Score


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(0.99 * len(xs)) - 1))]


def timed_requests(client: FleetClient, ref: str, n: int, concurrency: int, offset: int) -> list[float]:
    def one(i: int) -> float:
        t = time.perf_counter()
        client.score(list(range(1, 17)), adapter=ref, routing_key=f"user-{offset + i}")
        return (time.perf_counter() - t) * 1000.0

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


def run_one(store: str, router: str, adapters: list[Path], name: str, warm: bool, args) -> list[dict]:
    with StoreClient(store) as client:
        for d in adapters:
            client.push_dir(d, name)
        client.set_alias(name, "prod", ((1, 100),))
    ref = f"{name}@prod"
    out = []
    with FleetClient(router, timeout=120) as fleet, Rollouts(store) as rollouts:
        timed_requests(fleet, ref, args.steady, args.concurrency, 0)  # v1 resident, caches hot
        base = p99(timed_requests(fleet, ref, args.steady, args.concurrency, 10_000))
        rollouts.start(name, "prod", to=2, steps=args.steps, interval=args.interval, min_requests=0, warm=warm)
        seen = -1
        offset = 20_000
        while True:
            s = rollouts.status(name, "prod")
            if s.step > seen:
                seen = s.step
                first = timed_requests(fleet, ref, args.first, args.concurrency, offset)
                steady = timed_requests(fleet, ref, args.steady, args.concurrency, offset + 50_000)
                offset += 100_000
                out.append({"warm": warm, "step": s.steps[s.step], "first_p99": p99(first),
                            "steady_p99": p99(steady), "first_max": max(first), "before_p99": base,
                            "warm_note": s.warm_note})
            if s.state != "running":
                break
            time.sleep(0.01)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="50,100")
    ap.add_argument("--interval", default="4s")
    ap.add_argument("--first", type=int, default=50)
    ap.add_argument("--steady", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="warm / no-warm pairs, interleaved")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="rollout-warm-"))
    base = make_base_model("llama", tmp / "base", seed=0, **LLAMA)
    adapters = [make_peft_adapter(base, tmp / f"a{i}", seed=i, r=RANK, target_modules=TARGETS) for i in range(2)]
    rows = []
    with s3_and_store(bucket="rollout-warm") as (_, store):
        workers = [WorkerHandle(WorkerConfig(base_model=str(base), store=store, max_slots=8,
                                             disk_dir=str(tmp / f"w{i}"), announce_every_s=0.2))
                   for i in range(2)]
        router, _, stop_router = start_router(RouterConfig(store=store, poll_s=0.2))
        time.sleep(1.0)
        try:
            for r in range(args.rounds):
                for warm in (True, False):
                    rows += run_one(store, router, adapters, f"bench/r{r}-{'warm' if warm else 'cold'}", warm, args)
        finally:
            stop_router()
            for w in workers:
                w.stop()
    print(f"{'mode':8s} {'step':>4s} {'p99 first ' + str(args.first):>14s} {'p99 steady':>11s} {'ratio':>6s} "
          f"{'max first':>10s}")
    for row in rows:
        ratio = row["first_p99"] / row["steady_p99"]
        print(f"{'warm' if row['warm'] else 'no-warm':8s} {row['step']:4d} {row['first_p99']:12.1f}ms "
              f"{row['steady_p99']:9.1f}ms {ratio:6.2f} {row['first_max']:8.1f}ms")
    for warm in (True, False):
        ratios = [r["first_p99"] / r["steady_p99"] for r in rows if r["warm"] == warm]
        print(f"{'warm' if warm else 'no-warm'}: median ratio p99(first {args.first}) / p99(steady) = "
              f"{statistics.median(ratios):.2f} (max {max(ratios):.2f}) over {len(ratios)} steps")
    for row in rows:
        if row["warm"]:
            print(f"  warm step {row['step']}: {row['warm_note']}")


if __name__ == "__main__":
    main()
