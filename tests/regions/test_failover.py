"""Cross-region failover: region B's router hands what no worker of region B can take to region A's router, once,
with the request id and the tokens already sent; the two routers never bounce a request between them."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adapterfleet.common.channel import REQUEST_ID_HEADER
from adapterfleet.router.config import RouterConfig
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import WorkerHandle, start_router
from tests.regions.conftest import wait_until

FAST = dict(announce_every_s=0.2, announce_ttl_s=2.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapter = make_peft_adapter(base, root / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    return base, adapter


class Region:
    def __init__(self, name: str, store, base, tmp, workers: int, fallback: tuple[str, ...] = ()):
        self.name = name
        self.workers = [WorkerHandle(WorkerConfig(base_model=str(base), store=store.address, region=name,
                                                  max_slots=4, disk_dir=str(tmp / f"{name}{i}"), **FAST))
                        for i in range(workers)]
        cfg = RouterConfig(store=store.address, region=name, poll_s=0.1, fallback_routers=fallback, stall_s=10.0)
        self.address, self.router, self._stop = start_router(cfg)
        self.channel = grpc.insecure_channel(self.address)
        self.api = worker_pb2_grpc.WorkerStub(self.channel)
        wait_until(lambda: len(self.router.membership.views()) == workers, timeout=10.0, what="workers registered")

    def close(self) -> None:
        self.channel.close()
        self._stop()
        for w in self.workers:
            w.stop()


def generate(api, adapter: str, rid: str = "", n: int = 8) -> list[int]:
    req = worker_pb2.GenerateRequest(adapter=adapter, prompt_ids=[5, 6, 7], max_new_tokens=n, stop_ids=[127])
    return [t for m in api.Generate(req, timeout=30, metadata=((REQUEST_ID_HEADER, rid),) if rid else ())
            for t in m.token_ids]


@pytest.fixture
def two_regions(regions, tiny, tmp_path):
    base, adapter = tiny
    regions.ca.push_dir(adapter, "acme/fo", alias="prod")
    wait_until(lambda: regions.cb.resolve("acme/fo@prod"), what="replication to b")
    a = Region("a", regions.a, base, tmp_path, workers=1)
    b = Region("b", regions.b, base, tmp_path, workers=1, fallback=(a.address,))
    yield a, b
    b.close()
    a.close()


def test_region_b_workers_killed_under_load_requests_succeed_through_region_a(two_regions):
    a, b = two_regions
    expected = generate(a.api, "acme/fo@prod")
    assert generate(b.api, "acme/fo@prod") == expected  # region b's own worker, the same bytes
    assert b.router.fallback.sent[a.address] == 0
    done, errors, results = threading.Event(), [], []
    started = threading.Semaphore(0)

    def client(i: int) -> None:
        for j in range(6):
            try:
                results.append(generate(b.api, "acme/fo@prod", rid=f"c{i}-{j}"))
            except grpc.RpcError as err:  # counted, not raised: every request must succeed
                errors.append(f"{err.code()}: {err.details()}")
            started.release()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        for _ in range(4):
            started.acquire(timeout=30)  # some requests are done and others in flight: now region b dies
        b.workers[0].crash()
        for f in futures:
            f.result(timeout=120)
    done.set()
    assert errors == []
    assert len(results) == 24 and all(r == expected for r in results)
    assert b.router.fallback.answered[a.address] >= 1
    assert a.router.fallback.received["b"] == b.router.fallback.sent[a.address]
    assert b.router.failures == 0
    sent = b.router.fallback.sent[a.address]
    assert metric(b.router, "adapterfleet_router_cross_region_total", router=a.address, outcome="sent") == sent
    assert metric(a.router, "adapterfleet_router_cross_region_received_total", region="b") == sent


def metric(core, name: str, **labels) -> float:
    from adapterfleet.router.metrics import RouterCollector

    return next(s.value for fam in RouterCollector(core).collect() for s in fam.samples
                if s.name == name and s.labels == labels)


def test_no_ping_pong_between_regions_without_workers(regions):
    cfg_a = RouterConfig(store=regions.a.address, region="a", poll_s=0.1)
    addr_a, core_a, stop_a = start_router(cfg_a)
    cfg_b = RouterConfig(store=regions.b.address, region="b", poll_s=0.1, fallback_routers=(addr_a,))
    addr_b, core_b, stop_b = start_router(cfg_b)
    # region a falls back on region b too: a request forwarded once must not come back
    core_a.fallback.routers = (addr_b,)
    try:
        with grpc.insecure_channel(addr_b) as channel:
            api = worker_pb2_grpc.WorkerStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                api.Score(worker_pb2.ScoreRequest(adapter="", token_ids=[1, 2, 3]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "region b" in err.value.details() and addr_a in err.value.details()
        assert core_b.fallback.sent[addr_a] == 1 and core_a.fallback.received["b"] == 1
        assert core_a.fallback.sent[addr_b] == 0 and core_b.fallback.received == {}
    finally:
        stop_b()
        stop_a()


def test_score_with_no_worker_here_is_answered_by_the_fallback_region(two_regions):
    a, b = two_regions
    b.workers[0].stop()
    wait_until(lambda: not b.router.membership.views(), timeout=10.0, what="region b without workers")
    req = worker_pb2.ScoreRequest(adapter="acme/fo@prod", token_ids=[1, 2, 3, 4])
    here = b.api.Score(req, timeout=30)
    assert list(here.logprobs) == pytest.approx(list(a.api.Score(req, timeout=30).logprobs))
    assert b.router.fallback.answered[a.address] == 1


def test_with_region_b_store_down_an_unresolvable_ref_is_served_by_region_a(regions, two_regions):
    a, b = two_regions
    regions.b.stop()  # region b's store: a ref router b never resolved cannot be resolved there now
    req = worker_pb2.ScoreRequest(adapter="acme/fo@1", token_ids=[1, 2, 3, 4])
    here = b.api.Score(req, timeout=30)
    assert here.adapter_key == a.api.Score(req, timeout=30).adapter_key
    assert b.router.fallback.answered[a.address] == 1
    regions.b.start()  # the fixture's teardown stops it again
