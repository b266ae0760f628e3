"""A fleet whose workers are real processes (``adapterfleet worker serve``) sharing one disk-cache directory, as
two workers started from the same directory do by default; store (real Redis, moto S3) and router in-process.

Scenarios, in the order they run on the one fleet (each first tops the fleet up to the workers it needs):
  * load/unload cycles on one worker process: RSS after the warm-up vs after N cycles;
  * one bad request (NaN temperature; a garbage adapter ref) among 50 good ones: exactly 1 failure, no worker blamed;
  * concurrent loads through the router by workers sharing the cache directory: 0 failures, equal results;
  * kill -9 of the busiest worker under 20 greedy streams: every stream completes, token-identical to an
    undisturbed run;
  * SIGTERM of the busiest worker under load: its in-flight streams finish on it, new requests go elsewhere, 0
    failures.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from adapterfleet.router.breaker import State
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.placement import PlacementConfig
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from adapterfleet.worker.backend import TMP_PREFIX
from tests.faults.procs import WorkerProcess, load_unload_cycles, start_workers
from tests.helpers.servers import start_router

WORKERS = 3
STREAMS = 20
NEW_TOKENS = 64  # long enough that a stream is still running when its worker is killed
GROWTH_BOUND = 0.25  # CI's generous bound on RSS growth over a few hundred cycles (the 10,000-cycle figure: soak.py)


def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s")
        time.sleep(0.05)


class ProcessFleet:
    def __init__(self, store, models, tmp):
        self.store, self.models, self.tmp = store, models, tmp
        self.disk = tmp / "shared-cache"  # every worker's --disk-cache-dir
        self.workers: list[WorkerProcess] = []
        self._spawned = 0
        client = store.client
        self.peft = [str(client.push_dir(p, f"acme/p{i}").manifest.key) for i, p in enumerate(models.peft)]
        self.synthetic = [str(client.push_dir(models.synthetic(i), f"acme/s{i}").manifest.key) for i in range(12)]
        client.set_alias("acme/p0", "prod", ((1, 100),))
        self.top_up(WORKERS)
        # hot adapters get copies on every worker, so that several processes load the same entry at once
        cfg = RouterConfig(store=store.address, poll_s=0.1,
                           placement=PlacementConfig(hot_requests_per_copy=2.0, max_copies=WORKERS))
        self.address, self.router, self._stop_router = start_router(cfg)
        self.channel = grpc.insecure_channel(self.address)
        self.api = worker_pb2_grpc.WorkerStub(self.channel)
        self.wait_members()

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    def top_up(self, n: int) -> None:
        missing = n - len(self.live())
        if missing > 0:
            self.workers += start_workers(missing, first=self._spawned, store=self.store.address,
                                          base_model=self.models.base, disk_dir=self.disk, log_dir=self.tmp,
                                          max_slots=4, drain_s=30)
            self._spawned += missing

    def wait_members(self) -> None:
        want = {w.address for w in self.live()}
        wait_for(lambda: {v.address for v in self.router.membership.views()} == want, what="router sees the workers")

    def ensure(self, n: int) -> None:
        self.top_up(n)
        self.wait_members()

    def stats(self) -> router_pb2.RouterStats:
        return router_pb2_grpc.RouterStub(self.channel).Stats(router_pb2.RouterStatsRequest(), timeout=10)

    def close(self) -> None:
        self.channel.close()
        self._stop_router()
        for w in self.workers:
            w.close()


@pytest.fixture(scope="module")
def fleet(module_store, models, tmp_path_factory):
    f = ProcessFleet(module_store, models, tmp_path_factory.mktemp("process-fleet"))
    yield f
    f.close()


def code_of(fn) -> grpc.StatusCode | None:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code()
    return None


def all_healthy(fleet: ProcessFleet) -> bool:
    return all(w.healthy for w in fleet.stats().workers) and all(
        b.state is State.CLOSED for _, b in fleet.router.membership.breakers())


# --- load/unload cycles ---------------------------------------------------------------------------------------------


def cycles_case(n: int, fleet: ProcessFleet) -> None:
    fleet.ensure(1)
    worker = fleet.live()[0]
    refs = fleet.synthetic[:8] + fleet.peft
    report = load_unload_cycles(worker.stub(), worker.pid, refs, n, warmup=60)
    print(f"\n{n} load/unload cycles on {worker.name}: RSS {report.rss_warm_kib / 1024:.1f} MiB after warm-up -> "
          f"{report.rss_end_kib / 1024:.1f} MiB ({report.growth:+.1%}) in {report.seconds:.1f} s")
    stats = worker.stats()
    assert stats.cold_loads >= n + 60  # every cycle fetched, verified and injected again
    resident = worker.stub().ListResident(worker_pb2.ListResidentRequest(), timeout=10).adapters
    assert [a.key for a in resident if a.key in refs] == []  # unload freed every tier of each
    assert report.growth < GROWTH_BOUND, report.samples


def test_load_unload_cycles_do_not_grow_a_workers_rss(fleet):
    cycles_case(150, fleet)


@pytest.mark.slow
def test_load_unload_cycles_do_not_grow_a_workers_rss_long(fleet):
    cycles_case(2000, fleet)


# --- one bad request among 50 ---------------------------------------------------------------------------------------


BAD = {
    "nan-temperature": lambda api, ref: list(api.Generate(worker_pb2.GenerateRequest(
        adapter=ref, prompt_ids=[3, 4, 5], max_new_tokens=8,
        sampling=worker_pb2.SamplingParams(temperature=math.nan)), timeout=60)),
    "garbage-ref": lambda api, ref: api.Score(worker_pb2.ScoreRequest(
        adapter="acme/p0@\u00b2\x00" + "x" * 300, token_ids=[1, 2, 3]), timeout=60),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_one_bad_request_among_50_fails_alone(fleet, bad):
    fleet.ensure(2)
    api = fleet.api
    refs = [*fleet.peft, "acme/p0@prod", "acme/p1@1", ""]

    def good(i: int):
        ref = refs[i % len(refs)]
        if i % 2:
            return api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3, 4 + i % 9]), timeout=60)
        return list(api.Generate(worker_pb2.GenerateRequest(adapter=ref, prompt_ids=[3, 4, 5 + i % 9],
                                                            max_new_tokens=6), timeout=60))

    for i in range(len(refs)):  # every ref resolved and resident somewhere: the 50 are all warm
        good(i)
    core = fleet.router
    before = (core.retries, core.failures, sum(core.internal.values()))
    jobs = [*range(50), -1]
    start = threading.Barrier(len(jobs))

    def run(i: int):
        start.wait()
        return i, code_of(lambda: BAD[bad](api, refs[0]) if i < 0 else good(i))

    with ThreadPoolExecutor(len(jobs)) as pool:
        codes = dict(pool.map(run, jobs))
    assert codes.pop(-1) == grpc.StatusCode.INVALID_ARGUMENT
    assert Counter(codes.values()) == {None: 50}
    # refused at the router's edge (not counted there) or by a worker (counted once), never retried, never INTERNAL
    assert core.retries == before[0] and core.failures - before[1] in (0, 1)
    assert sum(core.internal.values()) == before[2]
    assert all_healthy(fleet)
    assert len(fleet.stats().workers) == len(fleet.live())


# --- a shared disk cache --------------------------------------------------------------------------------------------


def test_workers_sharing_a_disk_cache_load_concurrently_through_the_router(fleet):
    """16 adapters, 4 slots per worker (constant eviction), 192 concurrent Score calls: hot adapters get copies,
    so several worker processes fetch and write the same cache entry at once."""
    fleet.ensure(WORKERS)
    keys = fleet.peft + fleet.synthetic
    ids = [1, 2, 3, 4, 5, 6]
    calls = [keys[i % len(keys)] for i in range(192)]
    start = threading.Barrier(48)

    def score(key: str):
        try:
            return key, list(fleet.api.Score(worker_pb2.ScoreRequest(adapter=key, token_ids=ids), timeout=120)
                             .logprobs), None
        except grpc.RpcError as err:
            return key, None, f"{err.code().name}: {err.details()}"

    def client(c: int):
        start.wait()
        return [score(key) for key in calls[c::48]]

    before = fleet.router.failures
    with ThreadPoolExecutor(48) as pool:
        results = [r for rs in pool.map(client, range(48)) for r in rs]
    assert [e for _, _, e in results if e] == []
    assert fleet.router.failures == before
    by_key: dict[str, list[list[float]]] = {}
    for key, logprobs, _ in results:
        by_key.setdefault(key, []).append(logprobs)
    for key, answers in by_key.items():  # the same adapter gives the same numbers, whichever worker served it
        assert all(a == pytest.approx(answers[0], abs=1e-4) for a in answers), key
    holders = Counter(a.key for w in fleet.live()
                      for a in w.stub().ListResident(worker_pb2.ListResidentRequest(), timeout=10).adapters)
    assert max(holders.values()) >= 2  # some entry was shared: the test exercised the sharing
    on_disk = [p.name for p in fleet.disk.iterdir() if not p.name.startswith(".")]
    assert len(on_disk) == len(keys)
    assert [p.name for p in fleet.disk.iterdir() if p.name.startswith(TMP_PREFIX)] == []


# --- kill -9 and drain under load -----------------------------------------------------------------------------------


def stream_requests(fleet: ProcessFleet) -> list[worker_pb2.GenerateRequest]:
    refs = [*fleet.peft, "acme/p0@prod", ""]
    return [worker_pb2.GenerateRequest(adapter=refs[i % len(refs)],
                                       prompt_ids=[1 + (7 * i + j) % 120 for j in range(4)],
                                       max_new_tokens=NEW_TOKENS, stop_ids=[127])
            for i in range(STREAMS)]


@dataclass
class Wave:
    """Requests run at once through the router, each on its own thread; ``started`` is set once every stream has
    received its first tokens."""

    api: worker_pb2_grpc.WorkerStub
    requests: list[worker_pb2.GenerateRequest]
    tokens: dict[int, list[int]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._first = threading.Semaphore(0)
        self._threads = [threading.Thread(target=self._one, args=(i,)) for i in range(len(self.requests))]
        for t in self._threads:
            t.start()
        threading.Thread(target=self._count, daemon=True).start()

    def _one(self, i: int) -> None:
        got: list[int] = []
        try:
            for n, msg in enumerate(self.api.Generate(self.requests[i], timeout=180)):
                got += msg.token_ids
                if n == 0:
                    self._first.release()
            self.tokens[i] = got
        except grpc.RpcError as err:
            self.errors[i] = f"{err.code().name}: {err.details()}"
            self._first.release()

    def _count(self) -> None:
        for _ in self.requests:
            self._first.acquire()
        self.started.set()

    def join(self) -> Wave:
        for t in self._threads:
            t.join(240)
        return self


def reference(fleet: ProcessFleet) -> dict[int, list[int]]:
    """The undisturbed run: the same 20 streams at once through the same fleet."""
    ref = Wave(fleet.api, stream_requests(fleet)).join()
    assert ref.errors == {}
    assert all(len(t) > 8 for t in ref.tokens.values())  # real streams, not ones that stop at once
    return ref.tokens


def assert_new_requests_go_straight_to_the_living(fleet: ProcessFleet) -> None:
    refs = [*fleet.peft, "acme/p0@prod", ""]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: fleet.api.Score(worker_pb2.ScoreRequest(adapter=refs[i % len(refs)],
                                                                        token_ids=[1, 2, 3]), timeout=60), range(24)))


def busiest(fleet: ProcessFleet) -> tuple[WorkerProcess, int]:
    running = [(w.stats().running, i, w) for i, w in enumerate(fleet.live())]
    n, _, w = max(running)
    return w, n


def test_kill_9_of_a_worker_under_20_streams_costs_no_request_and_no_token(fleet):
    fleet.ensure(WORKERS)
    expected = reference(fleet)
    core = fleet.router
    retries, failures = core.retries, core.failures
    wave = Wave(fleet.api, stream_requests(fleet))
    assert wave.started.wait(60)
    victim, running = busiest(fleet)
    victim.kill()
    wave.join()
    assert victim.wait(10) == -9
    assert running >= 1  # streams were in flight on the victim when it died
    assert wave.errors == {}
    assert wave.tokens == expected
    assert core.failures == failures
    assert core.retries > retries  # the victim's streams were resumed elsewhere (the kill was not a no-op)
    # once the router has let the dead worker go, new requests go straight to the living
    wait_for(lambda: victim.address not in {v.address for v in core.membership.views()}, what="dead worker gone")
    retries = core.retries
    assert_new_requests_go_straight_to_the_living(fleet)
    assert core.retries == retries


def test_sigterm_drains_a_worker_under_load_with_no_failure(fleet):
    fleet.ensure(2)
    expected = reference(fleet)
    core = fleet.router
    failures, reasons = core.failures, Counter(core.retry_reasons)
    first = Wave(fleet.api, stream_requests(fleet))
    assert first.started.wait(60)
    victim, running = busiest(fleet)
    victim.terminate()
    second = Wave(fleet.api, stream_requests(fleet))  # new requests, sent while it drains
    first.join()
    second.join()
    assert victim.wait(60) == 0  # a clean exit, well inside --drain-seconds 30
    assert running >= 1
    assert first.errors == {} and second.errors == {}
    assert first.tokens == expected and second.tokens == expected
    assert core.failures == failures
    log = victim.log_text()
    assert "Generate CANCELLED" not in log and "Generate DEADLINE_EXCEEDED" not in log  # in-flight streams finished
    # what the router retried were new calls the draining worker refused (typed, or by its closing transport)
    retried = Counter(core.retry_reasons) - reasons
    assert set(retried) <= {"draining", "unavailable", "cancelled"}, retried
    wait_for(lambda: victim.address not in {v.address for v in core.membership.views()}, what="drained worker gone")
    retries = core.retries
    assert_new_requests_go_straight_to_the_living(fleet)
    assert core.retries == retries  # new requests went elsewhere at once
