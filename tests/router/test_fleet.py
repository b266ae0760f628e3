"""A real fleet: one store, three workers, one router (gRPC on port 0), tiny Llama, PEFT adapters."""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adapterfleet.router.config import RouterConfig
from adapterfleet.router.placement import PlacementConfig
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import WorkerHandle, start_router

# Announce often, but keep a TTL that a busy CI box cannot miss: a record that lapses under load would make a
# live worker vanish for a moment and its adapters move.
FAST = dict(announce_every_s=0.2, announce_ttl_s=2.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapters = [make_peft_adapter(base, root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"])
                    for i in range(6)]
    return base, adapters


class Fleet:
    def __init__(self, store, base, tmp_path, workers=3, placement=None):
        self.store, self.base, self.tmp = store, base, tmp_path
        self.workers = [self.add_worker(i) for i in range(workers)]
        cfg = RouterConfig(store=store.address, poll_s=0.1, placement=placement or PlacementConfig())
        self.address, self.router, self._stop_router = start_router(cfg)
        self.channel = grpc.insecure_channel(self.address)
        self.api = worker_pb2_grpc.WorkerStub(self.channel)
        self.wait_for(lambda: len(self.router.membership.views()) == len(self.workers))

    def add_worker(self, i: int) -> WorkerHandle:
        cfg = WorkerConfig(base_model=str(self.base), store=self.store.address, max_slots=4,
                           disk_dir=str(self.tmp / f"w{i}"), **FAST)
        return WorkerHandle(cfg)

    def stats(self) -> router_pb2.RouterStats:
        return router_pb2_grpc.RouterStub(self.channel).Stats(router_pb2.RouterStatsRequest())

    def holders(self, key: str) -> list[str]:
        return [w.id for w in self.workers if any(e.key == key for e in w.core.cache.entries())]

    @staticmethod
    def wait_for(cond, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.05)

    def close(self) -> None:
        self.channel.close()
        self._stop_router()
        for w in self.workers:
            w.stop()


@pytest.fixture
def fleet(store, tiny, tmp_path):
    base, adapters = tiny
    client = store.client()
    keys = [str(client.push_dir(a, f"acme/a{i}").manifest.key) for i, a in enumerate(adapters)]
    f = Fleet(store, base, tmp_path)
    f.keys = keys
    yield f
    f.close()


def score(api, adapter: str, ids=(1, 2, 3, 4)):
    return api.Score(worker_pb2.ScoreRequest(adapter=adapter, token_ids=list(ids)), timeout=30)


def test_the_same_adapter_lands_on_the_same_worker(fleet):
    for _ in range(3):
        assert score(fleet.api, "acme/a0").adapter_key == fleet.keys[0]
    assert len(fleet.holders(fleet.keys[0])) == 1
    [a0] = [a for a in fleet.stats().adapters if a.key == fleet.keys[0]]
    assert (a0.hits, a0.misses) == (2, 1)


def test_different_adapters_spread_and_each_stays_put(fleet):
    for _ in range(2):
        for i in range(6):
            score(fleet.api, f"acme/a{i}")
    placed = [fleet.holders(k) for k in fleet.keys]
    assert all(len(h) == 1 for h in placed)
    assert len({h[0] for h in placed}) >= 2  # rendezvous hashing spreads cold adapters
    assert fleet.stats().affinity_hit_rate == pytest.approx(0.5)


def test_not_found_is_not_retried(fleet):
    with pytest.raises(grpc.RpcError) as err:
        score(fleet.api, "acme/missing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert fleet.stats().retries == 0


def test_generate_through_the_router_equals_the_worker(fleet):
    req = worker_pb2.GenerateRequest(adapter="acme/a1", prompt_ids=[5, 6, 7], max_new_tokens=6, stop_ids=[127])
    via_router = [t for m in fleet.api.Generate(req) for t in m.token_ids]
    [holder] = [w for w in fleet.workers if w.id in fleet.holders(fleet.keys[1])]
    direct = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(holder.address))
    assert [t for m in direct.Generate(req) for t in m.token_ids] == via_router


def test_a_joining_worker_gets_traffic(fleet):
    newcomer = fleet.add_worker(9)
    fleet.workers.append(newcomer)
    fleet.wait_for(lambda: len(fleet.router.membership.views()) == 4, timeout=3)  # ~1 s after it starts
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: score(fleet.api, f"acme/a{i % 6}"), range(96)))
    assert newcomer.core.engine.stats.requests > 0


def test_a_dead_worker_is_never_picked_after_the_eviction_window(fleet):
    for i in range(6):
        score(fleet.api, f"acme/a{i}")
    victim = fleet.workers[0]
    victim.crash()
    fleet.wait_for(lambda: all(v.id != victim.id for v in fleet.router.membership.views()), timeout=5)
    retries = fleet.stats().retries
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: score(fleet.api, f"acme/a{i % 6}"), range(60)))
    assert fleet.stats().retries == retries and fleet.stats().failures == 0


def test_a_worker_killed_under_200_concurrent_requests_costs_no_request(fleet):
    errors, done = [], []
    start = threading.Barrier(51)

    def one(i: int):
        req = worker_pb2.GenerateRequest(adapter=f"acme/a{i % 6}" if i % 5 else "", prompt_ids=[3, 4, 5 + i % 50],
                                         max_new_tokens=24, stop_ids=[127])
        try:
            done.append(sum(len(m.token_ids) for m in fleet.api.Generate(req, timeout=120)))
        except grpc.RpcError as err:  # a mid-stream failure counts as a failed request too
            errors.append((err.code(), err.details()))

    def client(c: int):
        start.wait()
        for i in range(4):
            one(c * 4 + i)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(50)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(0.3)  # requests are in flight on every worker
    busiest = max(fleet.workers, key=lambda w: w.core.inflight)
    busiest.crash()
    for t in threads:
        t.join(180)
    assert errors == []
    assert len(done) == 200 and all(n >= 1 for n in done)
    assert fleet.stats().retries >= 1


def test_a_hot_adapter_spreads_to_more_workers(store, tiny, tmp_path):
    base, adapters = tiny
    key = str(store.client().push_dir(adapters[0], "acme/hot").manifest.key)
    fleet = Fleet(store, base, tmp_path, placement=PlacementConfig(hot_requests_per_copy=5.0, max_copies=3))
    try:
        for _ in range(120):  # one at a time: no load overflow, so any extra copy is the router's replication
            score(fleet.api, "acme/hot")
        fleet.wait_for(lambda: len(fleet.holders(key)) >= 2, timeout=10)
        [hot] = [a for a in fleet.stats().adapters if a.key == key]
        assert hot.replications >= 1 and hot.heat > 5.0
    finally:
        fleet.close()


def test_a_weighted_alias_with_a_yanked_target_routes_to_the_live_one(store, tiny, tmp_path):
    """alias prod -> 1:50,2:50, then `yank 2 --force`: every request for prod is served by version 1, through the
    router that cached the alias before the yank, and through a fresh one; with and without a routing key."""
    base, adapters = tiny
    client = store.client()
    v1, _ = (client.push_dir(a, "t/x").manifest for a in adapters[:2])
    client.set_alias("t/x", "prod", ((1, 50), (2, 50)))
    fleet = Fleet(store, base, tmp_path, workers=1)
    try:
        before = {score(fleet.api, "t/x@prod").adapter_key for _ in range(20)}
        assert len(before) == 2  # both versions served while both are live
        client.yank("t/x", 2, force=True)
        # the yank event reaches the running router's resolver asynchronously
        fleet.wait_for(lambda: score(fleet.api, "t/x@prod").adapter_key == str(v1.key), timeout=10)
        cfg = RouterConfig(store=store.address, poll_s=0.1)
        fresh_address, fresh, stop_fresh = start_router(cfg)
        try:
            fresh_api = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(fresh_address))
            fleet.wait_for(lambda: len(fresh.membership.views()) == 1)
            for api in (fleet.api, fresh_api):
                for i in range(20):
                    key = f"user-{i}" if i % 2 else ""
                    r = api.Score(worker_pb2.ScoreRequest(adapter="t/x@prod", token_ids=[1, 2, 3], routing_key=key),
                                  timeout=30)
                    assert r.adapter_key == str(v1.key)
        finally:
            stop_fresh()
    finally:
        fleet.close()
