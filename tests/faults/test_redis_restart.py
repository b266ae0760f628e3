"""The store's Redis stopped and started again (same port, append-only file) under a serving fleet: a store, two
workers, a router.

During pushes: every acknowledged push pulls back byte-identical and is served through the router, the versions
stay gap-free, and a push the restart cut fails UNAVAILABLE. While serving: resident adapters and aliases the router
has resolved keep serving (0 failed requests, also for an outage longer than the workers' registry TTL); what truly
needs Redis (a ref never resolved, a cold load, a push, a listing, an alias move) fails UNAVAILABLE, never INTERNAL.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from adapterfleet.common.errors import AdapterFleetError, Unavailable
from adapterfleet.router.breaker import State
from adapterfleet.v1 import worker_pb2
from tests.faults.conftest import StoreHandle, fault_store_config
from tests.helpers.redis_proc import RestartableRedis
from tests.router.test_fleet import Fleet


@dataclass
class RedisFleet:
    redis: RestartableRedis
    store: StoreHandle
    fleet: Fleet
    keys: list[str] = field(default_factory=list)  # the PEFT adapters acme/p0..p3, by digest


@pytest.fixture
def redis_fleet(s3_server, models, tmp_path):
    redis = RestartableRedis(tmp_path / "redis").start()
    store = StoreHandle(fault_store_config(redis.url, s3_server, tmp_path / "store"))
    client = store.client
    keys = [str(client.push_dir(p, f"acme/p{i}").manifest.key) for i, p in enumerate(models.peft)]
    client.set_alias("acme/p0", "prod", ((1, 100),))
    client.set_alias("acme/p1", "prod", ((1, 100),))
    fleet = Fleet(store, models.base, tmp_path, workers=2)
    yield RedisFleet(redis, store, fleet, keys)
    fleet.close()
    store.stop()
    redis.stop()


class Traffic:
    """Threads sending Score and Generate for ``refs`` through the router until stopped; every failure kept."""

    def __init__(self, fleet: Fleet, refs: list[str], threads: int = 3):
        self.fleet, self.refs = fleet, refs
        self.errors: list[str] = []
        self.served = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, t: int) -> None:
        i = t
        while not self._stop.is_set():
            ref = self.refs[i % len(self.refs)]
            try:
                if i % 2:
                    self.fleet.api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3 + i % 50]),
                                         timeout=60)
                else:
                    list(self.fleet.api.Generate(worker_pb2.GenerateRequest(
                        adapter=ref, prompt_ids=[3, 4, 5 + i % 50], max_new_tokens=4), timeout=60))
                self.served += 1
            except grpc.RpcError as err:
                self.errors.append(f"{ref}: {err.code().name}: {err.details()}")
            i += 3
            time.sleep(0.005)

    def stop(self) -> Traffic:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self


def healthy(fleet: Fleet) -> bool:
    return all(w.healthy for w in fleet.stats().workers) and all(
        b.state is State.CLOSED for _, b in fleet.router.membership.breakers())


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")) and all(  # not the marker
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_redis_restart_during_pushes_loses_no_acknowledged_push(redis_fleet, models, tmp_path):
    rf = redis_fleet
    client, fleet = rf.store.client, rf.fleet
    for ref in rf.keys[:2]:
        fleet.api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3]), timeout=60)
    traffic = Traffic(fleet, rf.keys[:2])  # digests resident on the workers: served whatever Redis does
    sources = [models.synthetic(i) for i in range(32)]
    outcomes: dict[int, object] = {}

    def pusher(k: int) -> None:
        for i in range(k, len(sources), 4):
            try:
                outcomes[i] = client.push_dir(sources[i], "t/many").manifest
            except AdapterFleetError as err:
                outcomes[i] = err

    threads = [threading.Thread(target=pusher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    while len(outcomes) < 6 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    rf.redis.stop()  # while pushes are streaming, validating and committing
    time.sleep(0.5)
    rf.redis.start()
    for t in threads:
        t.join(120)
    assert traffic.stop().errors == [] and traffic.served > 0

    assert len(outcomes) == len(sources)
    failed = {i: o for i, o in outcomes.items() if isinstance(o, AdapterFleetError)}
    assert failed, "the restart cut no push: the test proved nothing"
    assert all(isinstance(o, Unavailable) for o in failed.values()), [(o.code, o.message) for o in failed.values()]
    versions, _ = client.list_versions("t/many")
    assert [m.version for m in versions] == list(range(1, len(versions) + 1))  # gap-free
    by_digest = {m.digest: m for m in versions}
    acknowledged = {i: o for i, o in outcomes.items() if i not in failed}
    assert {o.digest for o in acknowledged.values()} <= set(by_digest)
    for i, manifest in acknowledged.items():  # every acknowledged push: pulled byte-identical, and served
        dest = tmp_path / "pulled" / str(i)
        client.pull(f"t/many@{manifest.version}", dest)
        assert same_files(sources[i], dest), i
        reply = fleet.api.Score(worker_pb2.ScoreRequest(adapter=f"t/many@{manifest.version}",
                                                        token_ids=[1, 2, 3]), timeout=60)
        assert reply.adapter_key == str(manifest.key)
    for m in versions:  # a version whose acknowledgement the restart lost is whole too: it is one of the sources
        if m.digest not in {o.digest for o in acknowledged.values()}:
            dest = tmp_path / "pulled" / f"v{m.version}"
            client.pull(f"t/many@{m.version}", dest)
            assert any(same_files(src, dest) for i, src in enumerate(sources) if i in failed), m.version
    assert healthy(fleet)


def redis_outage_case(rf: RedisFleet, models, outage_s: float) -> None:
    client, fleet = rf.store.client, rf.fleet
    served = [*rf.keys[:3], "acme/p0@prod", "acme/p1@prod", "acme/p2@1", "acme/p2", ""]
    for ref in served:  # resolved by the router and resident on a worker before Redis goes
        fleet.api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3]), timeout=60)
    traffic = Traffic(fleet, served)
    time.sleep(0.3)
    before = traffic.served
    rf.redis.stop()
    down_at = time.monotonic()

    # what truly needs Redis: a ref never resolved, a cold load (its manifest), a push, a listing, an alias move
    for ref in ("acme/p3@1", "acme/p3", rf.keys[3]):
        with pytest.raises(grpc.RpcError) as err:
            fleet.api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3]), timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (ref, err.value.code(), err.value.details())
    for call in (lambda: client.push_dir(models.synthetic(0), "acme/new"), client.list_adapters,
                 lambda: client.set_alias("acme/p0", "prod", ((1, 100),)), lambda: client.resolve("acme/p0@prod")):
        with pytest.raises(AdapterFleetError) as failure:
            call()
        assert isinstance(failure.value, Unavailable), (failure.value.code, failure.value.message)
        assert "Redis at" in failure.value.message
    time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
    during = traffic.served - before
    rf.redis.start()

    # back: what needed Redis works again (the router's resolver and the workers' announcements recover)
    deadline = time.monotonic() + 30
    while True:
        try:
            reply = fleet.api.Score(worker_pb2.ScoreRequest(adapter="acme/p3@1", token_ids=[1, 2, 3]), timeout=60)
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, err.details()
            time.sleep(0.2)
    assert reply.adapter_key == rf.keys[3]
    assert traffic.stop().errors == []
    assert during > 10  # requests were served while Redis was down
    assert healthy(fleet) and len(fleet.router.membership.views()) == 2


def test_redis_down_3s_costs_no_request_for_resident_adapters_and_cached_aliases(redis_fleet, models):
    redis_outage_case(redis_fleet, models, 3.0)


@pytest.mark.slow
def test_redis_down_30s_costs_no_request_for_resident_adapters_and_cached_aliases(redis_fleet, models):
    redis_outage_case(redis_fleet, models, 30.0)
