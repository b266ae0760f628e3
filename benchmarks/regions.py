"""Two regions on loopback: how fast a secondary follows its primary, what a cross-region hop costs, and whether a
region that loses its workers loses requests.

    python benchmarks/regions.py [--moves 200] [--requests 300] [--load-s 6] [--clients 4]

Every part is its own process, as in production: two redis-servers, moto's S3 server (a bucket per region), the
primary store (region a) and a secondary store (region b, `--primary`), stand-in workers that answer at once
(benchmarks/_stub_worker.py: one announced to each store, and a second in region b), router a, and router b with
`--fallback-router` = router a.

1. Replication lag of an alias move: SetAlias on the primary, then the time until region b's own Watch stream
   delivers the change (each move sets different weights, one at a time). Goal: p50 <= 200 ms, p99 <= 1 s.
2. Lost requests: clients stream Generate through router b; region b's workers are killed (SIGKILL) a third of the
   way in; every request must still finish (through region a). Goal: 0 lost.
3. The added hop: Score through router a (its own worker), and through router b while region b has no worker (one
   extra router hop to region a), alternated; the added p50. Goal: one router hop.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from adapterfleet.common.embedded_redis import RedisProcess, free_port  # noqa: E402
from adapterfleet.store.client import StoreClient  # noqa: E402
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402
from benchmarks._fleet import ENV, REPO, _wait_port  # noqa: E402
from tests.helpers.synthetic import write_adapter  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Procs(contextlib.ExitStack):
    def spawn(self, argv: list[str], port: int | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
        self.callback(lambda: (proc.kill(), proc.wait(10)))
        if port is not None:
            _wait_port(port)
        return proc

    def cli(self, *args: str, port: int) -> subprocess.Popen:
        return self.spawn([sys.executable, "-m", "adapterfleet.cli.main", *args, "--insecure", "--log-level",
                           "ERROR"], port)

    def stub(self, store: str, port: int) -> subprocess.Popen:
        return self.spawn([sys.executable, str(REPO / "benchmarks/_stub_worker.py"), store, str(port), "8"], port)


def wait_until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


def lag(a: StoreClient, b: StoreClient, moves: int, tmp: Path) -> list[float]:
    for i in (1, 2):
        a.push_dir(write_adapter(tmp / f"v{i}", seed=i), "bench/lag")
    wait_until(lambda: _resolves(b, "bench/lag@2"))
    seen: dict[tuple, float] = {}
    ready = threading.Event()

    def follow() -> None:
        ready.set()
        for e in b.watch(cursor="$", name="bench/lag"):
            if e.type == "ALIAS_CHANGED":
                seen[tuple(e.targets)] = time.perf_counter()

    threading.Thread(target=follow, daemon=True).start()
    ready.wait()
    time.sleep(0.5)  # the watch is open
    out = []
    for i in range(moves):
        targets = ((1, 1 + i % 99), (2, 99 - i % 99)) if i % 99 else ((2, 100),)
        targets = tuple(t for t in targets if t[1] > 0)
        t0 = time.perf_counter()
        a.set_alias("bench/lag", "prod", targets)
        wait_until(lambda t=targets: t in seen, timeout=10)
        out.append(seen.pop(targets) - t0)
        time.sleep(0.01)
    return out


def _resolves(client: StoreClient, ref: str) -> bool:
    try:
        client.resolve(ref)
        return True
    except Exception:  # noqa: BLE001 - not replicated yet
        return False


def under_load(router_b: str, clients: int, seconds: float, kill) -> tuple[int, int]:
    ok, lost = [0], []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(router_b) as ch:
            api = worker_pb2_grpc.WorkerStub(ch)
            while time.monotonic() < stop:
                try:
                    tokens = [t for m in api.Generate(worker_pb2.GenerateRequest(adapter="", prompt_ids=[1, 2],
                                                                                 max_new_tokens=8), timeout=30)
                              for t in m.token_ids]
                    assert tokens == list(range(8)), tokens  # resumed streams continue where they broke
                    with lock:
                        ok[0] += 1
                except (grpc.RpcError, AssertionError) as err:
                    with lock:
                        lost.append(str(err)[:200])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    kill()
    for t in threads:
        t.join()
    for why in lost[:3]:
        print("  lost:", why)
    return ok[0], len(lost)


def hop(router_a: str, router_b: str, n: int) -> tuple[list[float], list[float]]:
    req = worker_pb2.ScoreRequest(adapter="", token_ids=[1, 2, 3, 4])
    direct, via = [], []
    with grpc.insecure_channel(router_a) as ca, grpc.insecure_channel(router_b) as cb:
        apis = [(worker_pb2_grpc.WorkerStub(ca), direct), (worker_pb2_grpc.WorkerStub(cb), via)]
        for api, _ in apis:  # warm both paths (channels, the fallback channel)
            for _ in range(20):
                api.Score(req, timeout=10)
        for i in range(2 * n):
            api, out = apis[i % 2]
            t0 = time.perf_counter()
            api.Score(req, timeout=10)
            out.append(time.perf_counter() - t0)
    return direct, via


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--moves", type=int, default=200)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--load-s", type=float, default=6.0)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args()
    with Procs() as procs, tempfile.TemporaryDirectory() as tmp:
        reds = [RedisProcess().start() for _ in range(2)]
        for r in reds:
            procs.callback(r.stop)
        s3 = free_port()
        procs.spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3)], s3)
        sa, sb, ra, rb, wa, wb1, wb2 = (free_port() for _ in range(7))
        s3_url = f"http://127.0.0.1:{s3}"
        procs.cli("store", "serve", "--port", str(sa), "--redis-url", reds[0].url, "--s3-endpoint", s3_url,
                  "--bucket", "region-a", "--region", "a", "--data-dir", f"{tmp}/a", port=sa)
        procs.cli("store", "serve", "--port", str(sb), "--redis-url", reds[1].url, "--s3-endpoint", s3_url,
                  "--bucket", "region-b", "--region", "b", "--primary", f"127.0.0.1:{sa}", "--data-dir",
                  f"{tmp}/b", port=sb)
        procs.stub(f"127.0.0.1:{sa}", wa)
        b_workers = [procs.stub(f"127.0.0.1:{sb}", port) for port in (wb1, wb2)]
        procs.cli("router", "serve", "--port", str(ra), "--store", f"127.0.0.1:{sa}", "--region", "a", port=ra)
        procs.cli("router", "serve", "--port", str(rb), "--store", f"127.0.0.1:{sb}", "--region", "b",
                  "--fallback-router", f"127.0.0.1:{ra}", port=rb)
        a, b = StoreClient(f"127.0.0.1:{sa}", timeout=10), StoreClient(f"127.0.0.1:{sb}", timeout=10)
        time.sleep(2)  # workers announced, routers polled

        lags = lag(a, b, args.moves, Path(tmp))
        print(f"replication lag of an alias move ({len(lags)} moves): p50 {pct(lags, .5) * 1e3:.1f} ms, "
              f"p99 {pct(lags, .99) * 1e3:.1f} ms, max {max(lags) * 1e3:.1f} ms  (goal p50 <= 200 ms, p99 <= 1 s)")

        def kill() -> None:
            for w in b_workers:
                w.kill()

        ok, lost = under_load(f"127.0.0.1:{rb}", args.clients, args.load_s, kill)
        print(f"region b's workers killed under load ({args.clients} clients, {args.load_s:g} s): {ok} requests "
              f"finished, {lost} lost  (goal 0 lost)")

        time.sleep(4)  # region b's worker records expire: every request through router b now goes to region a
        direct, via = hop(f"127.0.0.1:{ra}", f"127.0.0.1:{rb}", args.requests)
        d50, v50 = statistics.median(direct), statistics.median(via)
        print(f"Score p50 through router a: {d50 * 1e3:.2f} ms; through router b -> router a: {v50 * 1e3:.2f} ms; "
              f"the cross-region hop adds {(v50 - d50) * 1e3:.2f} ms p50 (x{v50 / d50:.2f}); p99 "
              f"{pct(direct, .99) * 1e3:.2f} vs {pct(via, .99) * 1e3:.2f} ms")
        a.close()
        b.close()


if __name__ == "__main__":
    main()
