"""One bad request fails alone; a dead, refusing or silent worker costs no request; an outage of the store or its
Redis costs no request for an alias the router has resolved before. Real store (and Redis, S3), real router on
port 0; real workers, or test-only stub workers (tests/router/stub_worker.py) where a test needs a worker to
refuse connections or hang on cue."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import socket
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.common.errors import Unavailable
from adapterfleet.router.breaker import BreakerConfig, State
from adapterfleet.router.config import RouterConfig
from adapterfleet.store.client import StoreClient
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import start_router, start_store
from tests.router.stub_worker import StubWorker
from tests.router.test_fleet import Fleet

POISON = "poison"  # the routing key that makes the fault-injecting hook raise inside a worker


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapters = [make_peft_adapter(base, root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"])
                    for i in range(3)]
    return base, adapters


def code_of(fn) -> grpc.StatusCode | None:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code()
    return None


def breakers(router_core) -> dict[str, tuple[State, int]]:
    return {r.id: (b.state, b.trips) for r, b in router_core.membership.breakers()}


# --- one bad request fails alone ---------------------------------------------------------------------------------
def inject_internal(workers) -> list[int]:
    """A fault-injecting hook on real workers: a request with routing key POISON raises inside the worker's own
    code, which its error interceptor answers as INTERNAL. Returns the count of poisoned calls (all workers)."""
    hits = [0]
    for w in workers:
        core = w.core
        score, generate = core.score, core.generate

        async def faulty_score(adapter, token_ids, text, routing_key="", _score=score):
            if routing_key == POISON:
                hits[0] += 1
                raise RuntimeError("injected fault: this request breaks the worker")
            return await _score(adapter, token_ids, text, routing_key)

        async def faulty_generate(p, _generate=generate):
            if p.routing_key == POISON:
                hits[0] += 1
                raise RuntimeError("injected fault: this request breaks the worker")
            async for chunk in _generate(p):
                yield chunk

        core.score, core.generate = faulty_score, faulty_generate
    return hits


@pytest.fixture
def fleet(store, tiny, tmp_path):
    base, adapters = tiny
    client = store.client()
    keys = [str(client.push_dir(a, f"acme/a{i}").manifest.key) for i, a in enumerate(adapters)]
    f = Fleet(store, base, tmp_path, workers=2)
    f.keys = keys
    yield f
    f.close()


def test_a_request_that_fails_at_the_worker_is_not_retried_and_blames_no_worker(fleet):
    """INTERNAL (injected) and INVALID_ARGUMENT (the worker's own checks), by Score and by Generate, 5 of each,
    among 50 concurrent good requests: exactly the 20 bad ones fail, each on one worker, with its own status;
    nothing is retried and every worker stays healthy."""
    hits = inject_internal(fleet.workers)
    api = fleet.api

    def good(i: int):
        if i % 2:
            return api.Score(worker_pb2.ScoreRequest(adapter=f"acme/a{i % 3}", token_ids=[1, 2, 3, 4]), timeout=60)
        req = worker_pb2.GenerateRequest(adapter=f"acme/a{i % 3}", prompt_ids=[3, 4, 5], max_new_tokens=4)
        return [t for m in api.Generate(req, timeout=60) for t in m.token_ids]

    bad = {
        "internal_score": lambda: api.Score(worker_pb2.ScoreRequest(
            adapter="acme/a0", token_ids=[1, 2, 3], routing_key=POISON), timeout=60),
        "internal_generate": lambda: list(api.Generate(worker_pb2.GenerateRequest(
            adapter="acme/a1", prompt_ids=[1, 2], routing_key=POISON), timeout=60)),
        "invalid_score": lambda: api.Score(worker_pb2.ScoreRequest(adapter="acme/a0", token_ids=[1]), timeout=60),
        "invalid_generate": lambda: list(api.Generate(worker_pb2.GenerateRequest(
            adapter="acme/a2", prompt_ids=[10 ** 6]), timeout=60)),
    }
    jobs = [("good", i) for i in range(50)] + [(name, i) for name in bad for i in range(5)]
    random.Random(0).shuffle(jobs)
    start = threading.Barrier(len(jobs))

    def run(job):
        name, i = job
        start.wait()
        return name, code_of(lambda: good(i) if name == "good" else bad[name]())

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    codes: dict[str, list] = {}
    for name, code in results:
        codes.setdefault(name, []).append(code)
    assert codes["good"] == [None] * 50
    assert codes["internal_score"] == codes["internal_generate"] == [grpc.StatusCode.INTERNAL] * 5
    assert codes["invalid_score"] == codes["invalid_generate"] == [grpc.StatusCode.INVALID_ARGUMENT] * 5
    assert hits[0] == 10  # each poisoned request reached exactly one worker
    stats = fleet.stats()
    assert stats.retries == 0 and stats.failures == 20
    assert all(w.healthy for w in stats.workers) and len(stats.workers) == 2
    assert all(b == (State.CLOSED, 0) for b in breakers(fleet.router).values())
    core = fleet.router
    assert sum(core.internal.values()) == 10
    assert core.failure_reasons == {("internal", "internal"): 10, ("request", "invalid_argument"): 10}


def test_a_nan_temperature_fails_alone_and_blames_no_worker(fleet):
    """The reported case: one NaN-temperature request once made the router retry INTERNAL on every worker and mark
    them all unhealthy. Now it fails once (INVALID_ARGUMENT where the worker checks it, INTERNAL where it does not),
    and the requests after it are served by both workers."""
    nan = worker_pb2.GenerateRequest(adapter="acme/a0", prompt_ids=[3, 4, 5], max_new_tokens=4,
                                     sampling=worker_pb2.SamplingParams(temperature=float("nan")))
    for _ in range(3):
        code = code_of(lambda: list(fleet.api.Generate(nan, timeout=60)))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    assert fleet.stats().retries == 0
    assert all(w.healthy for w in fleet.stats().workers)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: fleet.api.Score(worker_pb2.ScoreRequest(
            adapter=f"acme/a{i % 3}", token_ids=[1, 2, 3]), timeout=60), range(24)))
    assert all(w.core.engine.stats.requests > 0 for w in fleet.workers)


# --- the breaker, stalls and the per-worker calls: test-only stub workers -----------------------------------------
def canonical(i: int) -> str:
    return f"acme/s{i}@sha256:{hashlib.sha256(str(i).encode()).hexdigest()}"


class StubFleet:
    def __init__(self, store, n: int = 3, **router):
        self.stubs = [StubWorker(store.address, f"{i}") for i in range(n)]
        cfg = RouterConfig(store=store.address, poll_s=0.1, **router)
        self.address, self.router, self._stop = start_router(cfg)
        self.channel = grpc.insecure_channel(self.address)
        self.api = worker_pb2_grpc.WorkerStub(self.channel)
        Fleet.wait_for(lambda: len(self.router.membership.views()) == n)

    def score(self, i: int, timeout: float = 30):
        return self.api.Score(worker_pb2.ScoreRequest(adapter=canonical(i), token_ids=[1, 2, 3]), timeout=timeout)

    def stats(self) -> router_pb2.RouterStats:
        return router_pb2_grpc.RouterStub(self.channel).Stats(router_pb2.RouterStatsRequest())

    def close(self):
        self.channel.close()
        self._stop()
        for s in self.stubs:
            s.close()


@pytest.fixture
def stubs(store):
    made = []

    def make(**router):
        made.append(StubFleet(store, **router))
        return made[-1]

    yield make
    for f in made:
        f.close()


def test_the_breaker_ejects_a_refusing_worker_and_readmits_it_after_a_probe(stubs):
    fleet = stubs(breaker=BreakerConfig(consecutive=3, open_s=4.0))  # the 60 requests below end well within it
    for i in range(60):
        fleet.score(i)
    victim = fleet.stubs[1]
    assert victim.calls > 0
    victim.stop_serving()  # connection refused, while it keeps announcing itself
    for i in range(60):
        fleet.score(i)  # every request succeeds: those placed on the victim go elsewhere
    core = fleet.router
    assert breakers(core)[victim.id] == (State.OPEN, 1)
    assert core.retry_reasons == {"unavailable": 3} and core.failures == 0  # three failures in a row, then ejected
    assert [w.healthy for w in fleet.stats().workers if w.id == victim.id] == [False]
    victim.start_serving()
    before = victim.calls
    deadline = time.monotonic() + 15
    i = 0
    while victim.calls == before or breakers(core)[victim.id][0] is not State.CLOSED:
        assert time.monotonic() < deadline, f"not readmitted: {breakers(core)[victim.id]}"
        fleet.score(i % 60)
        i += 1
        time.sleep(0.02)
    for j in range(60):
        fleet.score(j)
    assert victim.calls > before + 5  # back in the rotation, not just probed
    assert core.failures == 0


def test_a_worker_that_stops_answering_is_abandoned_after_stall_s(stubs):
    fleet = stubs(stall_s=0.5)
    hung = fleet.stubs[0]
    hung.hang.set()
    for i in range(30):  # Score: its attempt times out; Generate: it hangs after two tokens and resumes elsewhere
        assert fleet.score(i).adapter_key == canonical(i)
        req = worker_pb2.GenerateRequest(adapter=canonical(i), prompt_ids=[1, 2], max_new_tokens=6)
        assert [t for m in fleet.api.Generate(req, timeout=30) for t in m.token_ids] == [100, 101, 102, 103, 104, 105]
    core = fleet.router
    assert core.retry_reasons["stalled"] >= 1 and core.failures == 0
    assert hung.calls >= 1


def test_a_callers_deadline_is_the_callers_own_fault(stubs):
    """A caller whose deadline runs out gets DEADLINE_EXCEEDED; the slow worker is not blamed, not retried."""
    fleet = stubs()
    for s in fleet.stubs:
        s.hang.set()
    for i in range(5):
        assert code_of(lambda i=i: fleet.score(i, timeout=0.3)) == grpc.StatusCode.DEADLINE_EXCEEDED
    core = fleet.router
    assert core.retries == 0
    assert all(state is State.CLOSED for state, _ in breakers(core).values())


@pytest.mark.parametrize("method", ["LoadAdapter", "UnloadAdapter", "Pin", "ListResident", "Stats"])
def test_the_per_worker_calls_are_unimplemented_on_the_router_and_say_where_to_go(stubs, method):
    fleet = stubs()
    request = {"LoadAdapter": worker_pb2.LoadAdapterRequest, "UnloadAdapter": worker_pb2.UnloadAdapterRequest,
               "Pin": worker_pb2.PinRequest, "ListResident": worker_pb2.ListResidentRequest,
               "Stats": worker_pb2.StatsRequest}[method]()
    with pytest.raises(grpc.RpcError) as err:
        getattr(fleet.api, method)(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "call the worker directly" in err.value.details()


# --- the store or its Redis down: cached aliases keep working ------------------------------------------------------
class PinnedRedis:
    """redis-server on a fixed port with an append-only file, so it can stop and come back with its data."""

    def __init__(self, data_dir: Path):
        self.port, self.data_dir = free_port(), data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "yes",
             "--dir", str(self.data_dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not come up")

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


class PinnedStore:
    """A store on a fixed port, so that it can stop and come back at the same address."""

    def __init__(self, cfg):
        self.cfg = dataclasses.replace(cfg, port=free_port())
        self.address = f"127.0.0.1:{self.cfg.port}"
        self._stop = None

    def start(self) -> None:
        address, _core, self._stop = start_store(self.cfg)
        assert address == self.address

    def stop(self) -> None:
        if self._stop:
            self._stop()
            self._stop = None


@pytest.mark.parametrize(("outage", "seen_event"), [("store", True), ("store", False), ("redis", True)],
                         ids=["store-resume-from-cursor", "store-restart-from-now", "redis"])
def test_cached_aliases_survive_an_outage_and_the_watch_catches_up(outage, seen_event, store_config, tiny,
                                                                    tmp_path):
    """The store (or its Redis) down for 4 s under a stream of requests for a cached alias: 0 failures; a ref this
    router never resolved fails UNAVAILABLE naming the store; once it is back, an alias move reaches the router.
    With the store down, the router's watch breaks and it serves its cache stale, then resumes from its cursor (or
    restarts from "now" and asks again). With only Redis down the store's own Watch rides the outage out and
    resumes (store/service.py), so the router's cache simply stays fresh."""
    base, adapters = tiny
    redis = PinnedRedis(tmp_path / "redis")
    redis.start()
    store = PinnedStore(dataclasses.replace(store_config, redis_url=redis.url))
    store.start()
    client = StoreClient(store.address)
    v1 = client.push_dir(adapters[0], "t/x", alias="prod").manifest
    v2 = client.push_dir(adapters[1], "t/x").manifest
    client.push_dir(adapters[2], "t/y", alias="prod")
    fleet = Fleet(store, base, tmp_path, workers=1)
    stop, errors, served = threading.Event(), [], [0]
    try:
        assert fleet.api.Score(worker_pb2.ScoreRequest(adapter="t/x@prod", token_ids=[1, 2, 3])).adapter_key == str(
            v1.key)
        resolver = fleet.router.resolver
        if seen_event:  # a change after the router started: the watch has a cursor to resume from
            client.set_alias("t/y", "canary", ((1, 100),))
            Fleet.wait_for(lambda: resolver.cursor != "$")
        else:
            assert resolver.cursor == "$"

        def background():
            while not stop.is_set():
                try:
                    fleet.api.Score(worker_pb2.ScoreRequest(adapter="t/x@prod", token_ids=[1, 2, 3]), timeout=30)
                    served[0] += 1
                except grpc.RpcError as err:
                    errors.append((err.code(), err.details()))
                time.sleep(0.01)

        thread = threading.Thread(target=background)
        thread.start()
        down_at, before = time.monotonic(), served[0]
        (store if outage == "store" else redis).stop()
        if outage == "store":
            Fleet.wait_for(lambda: not resolver.watch_up)
        with pytest.raises(grpc.RpcError) as err:  # never resolved by this router: needs the store
            fleet.api.Score(worker_pb2.ScoreRequest(adapter="t/y@prod", token_ids=[1, 2, 3]), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert store.address in err.value.details()
        # down for at least 4 s (longer than the workers' TTL) and until 20 requests were served meanwhile: a count,
        # not a rate, so a slow box only makes the outage longer
        Fleet.wait_for(lambda: time.monotonic() - down_at >= 4.0 and served[0] - before > 20, timeout=60)
        during = served[0] - before
        (store if outage == "store" else redis).start()
        Fleet.wait_for(lambda: resolver.watch_up, timeout=20)
        # the store's pooled Redis connections died with Redis: the first write on one may answer UNAVAILABLE
        # ("the call may be retried"), which is what a caller does
        Fleet.wait_for(lambda: move_alias(client), timeout=10)
        Fleet.wait_for(lambda: fleet.api.Score(worker_pb2.ScoreRequest(
            adapter="t/x@prod", token_ids=[1, 2, 3])).adapter_key == str(v2.key), timeout=10)
        stop.set()
        thread.join(30)
        assert errors == []
        assert during > 20
        assert resolver.stale_serves > 0 or outage == "redis"
    finally:
        stop.set()
        client.close()
        fleet.close()
        store.stop()
        redis.stop()


def move_alias(client) -> bool:
    """prod 1 -> 2 by compare-and-set; False on a retryable UNAVAILABLE (a Redis connection that died)."""
    try:
        client.set_alias("t/x", "prod", ((2, 100),), expect=((1, 100),))
    except Unavailable:
        return False
    return True
