"""A real fleet for rollouts: one store (its rollout controller on short timers), two workers, one router that
reports per-version figures every 0.2 s; a tiny Llama, PEFT adapters, and one adapter made for another base model
with the same module names (it fails at load)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import warnings
from dataclasses import replace

import grpc
import pytest

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.router.config import RouterConfig
from adapterfleet.sdk.fleet import FleetClient
from adapterfleet.store.config import Limits, StoreConfig
from adapterfleet.store.rollout_config import RolloutConfig
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import ServerThread, WorkerHandle

FAST_ROLLOUTS = RolloutConfig(tick_s=0.05, lease_s=1.0, stats_bucket_s=0.2, warm_settle_s=0.4, warm_poll_s=0.05,
                              command_wait_s=5.0)


def wait_for(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g}s")
        time.sleep(0.05)


def rollout_store_config(redis_server, s3_server, tmp, **rollout) -> StoreConfig:
    from adapterfleet.store.config import S3Config

    s3 = S3Config(endpoint_url=s3_server, bucket=f"t-{uuid.uuid4().hex[:12]}", access_key_id="test",
                  secret_access_key="test", part_size=5 << 20)
    return StoreConfig(port=0, redis_url=redis_server.url, redis_prefix=f"r{uuid.uuid4().hex[:8]}:", s3=s3,
                       data_dir=str(tmp / "store"), blob_cache_bytes=0, limits=Limits(max_rank=64),
                       rollout=replace(FAST_ROLLOUTS, **rollout))


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        good = [make_peft_adapter(base, root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"])
                for i in range(3)]
        other = make_base_model("llama", root / "other-base", seed=0, hidden_size=48, num_attention_heads=4)
        bad = make_peft_adapter(other, root / "bad", seed=9, r=4, target_modules=["q_proj", "v_proj"])
    return base, good, bad


class StoreProcess:
    """An in-process store with its rollout controller; ``crash()`` stops it without handing its leases over."""

    def __init__(self, cfg: StoreConfig):
        from adapterfleet.store.server import create_store_server, make_blob_store, make_redis

        self.thread = ServerThread()

        async def build():
            client = make_redis(cfg.redis_url)
            store = create_store_server(cfg, client, make_blob_store(cfg))
            await store.start()
            return store, client

        self.server, self._redis = self.thread.run(build(), timeout=120)  # a busy box can be slow to start
        self.address = f"127.0.0.1:{self.server.port}"
        self.controller = self.server.rollouts.controller
        self._up = True

    def crash(self) -> None:
        if self._up:
            self._up = False

            async def die():
                await self.server.rollouts.controller.stop(release=False)
                await self.server.server.stop(0)

            self.thread.run(die(), timeout=60)
            self.thread.close()

    def stop(self) -> None:
        if self._up:
            self._up = False

            async def down():
                await self.server.stop(0)
                await self._redis.aclose()

            self.thread.run(down(), timeout=60)
            self.thread.close()


class RolloutFleet:
    def __init__(self, cfg: StoreConfig, base, tmp):
        from adapterfleet.router.server import create_router_server

        self.cfg = cfg
        self.store = StoreProcess(cfg)
        self.address = self.store.address
        self.workers = [WorkerHandle(WorkerConfig(base_model=str(base), store=self.address, max_slots=4,
                                                  disk_dir=str(tmp / f"w{i}"), announce_every_s=0.1,
                                                  announce_ttl_s=2.0)) for i in range(2)]
        rcfg = RouterConfig(store=self.address, poll_s=0.1, version_report_s=0.2)
        self._router_thread = ServerThread()

        async def build():
            router = create_router_server(rcfg)
            await router.start()
            return router

        self._router = self._router_thread.run(build(), timeout=120)
        self.router = self._router.core
        self.router_loop = self._router_thread.loop
        self.router_address = f"127.0.0.1:{self._router.port}"
        self.router_region = rcfg.region
        wait_for(lambda: len(self.router.membership.views()) == 2, what="two workers")
        self.channel = grpc.insecure_channel(self.router_address)
        self.api = worker_pb2_grpc.WorkerStub(self.channel)

    def score(self, adapter: str, routing_key: str = "", ids=(1, 2, 3, 4)) -> worker_pb2.ScoreResponse:
        return self.api.Score(worker_pb2.ScoreRequest(adapter=adapter, token_ids=list(ids), routing_key=routing_key),
                              timeout=30)

    def holders(self, key: str) -> dict[str, str]:
        """worker address -> tier, for the workers that hold ``key``."""
        return {w.address: e.tier for w in self.workers for e in w.core.cache.entries() if e.key == key}

    def close(self) -> None:
        self.channel.close()
        self._router_thread.run(self._router.stop(0))
        self._router_thread.close()
        for w in self.workers:
            w.stop()
        self.store.stop()


@pytest.fixture(scope="session")
def fleet(redis_server, s3_server, models, tmp_path_factory):
    base, _, _ = models
    tmp = tmp_path_factory.mktemp("rollout-fleet")
    f = RolloutFleet(rollout_store_config(redis_server, s3_server, tmp), base, tmp)
    yield f
    f.close()


@pytest.fixture(scope="module")
def lone_store(redis_server, s3_server, tmp_path_factory):
    """A store process alone (no workers, no router): what the CLI and API tests talk to."""
    p = StoreProcess(rollout_store_config(redis_server, s3_server, tmp_path_factory.mktemp("lone-store")))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Adapter directories written without torch (store-side tests): v1, v2 and one of another hidden size."""
    from tests.helpers.synthetic import write_adapter

    root = tmp_path_factory.mktemp("synthetic")
    good = [write_adapter(root / f"s{i}", seed=i) for i in range(2)]
    return None, good, write_adapter(root / "bad", hidden=48, seed=9)


def pusher(address: str, models):
    """push(name) -> keys of v1, v2 (good adapters) and v3 (made for another base model); alias prod -> 1."""
    from adapterfleet.store.client import StoreClient

    _, good, bad = models
    client = StoreClient(address)

    def go(name: str, alias: str = "prod") -> list[str]:
        keys = [str(client.push_dir(d, name).manifest.key) for d in (good[0], good[1], bad)]
        client.set_alias(name, alias, ((1, 100),))
        return keys

    return go, client.close


@pytest.fixture
def push(fleet, models):
    go, close = pusher(fleet.address, models)
    yield go
    close()


@pytest.fixture
def push_lone(lone_store, synthetic):
    go, close = pusher(lone_store.address, synthetic)
    yield go
    close()


def router_choices(fleet, ref: str, n: int) -> list[str]:
    """The router's own choice (its resolver, store/targets.choose) for n routing keys."""
    resolver = fleet.router.resolver

    async def choose():
        return [await resolver.key(ref, f"user-{i}") for i in range(n)]

    return asyncio.run_coroutine_threadsafe(choose(), fleet.router_loop).result(30)


class Traffic:
    """Score requests through the router (the SDK) in a thread, with rotating routing keys, until stopped."""

    def __init__(self, fleet, ref: str):
        self.errors: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._client = FleetClient(fleet.router_address, timeout=30)
        self._thread = threading.Thread(target=self._run, args=(ref,), daemon=True)
        self._thread.start()

    def _run(self, ref: str) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self._client.score([1, 2, 3, 4], adapter=ref, routing_key=f"k{i % 500}")
            except AdapterFleetError as err:  # a failing version is what some tests send traffic to
                self.errors.append(err.code)
            self.count += 1
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def registry_holders(fleet, key: str) -> int:
    """How many workers the store's registry shows holding ``key`` (what warm-before-switch reads)."""
    from adapterfleet.v1 import registry_pb2, registry_pb2_grpc

    with grpc.insecure_channel(fleet.address) as channel:
        workers = registry_pb2_grpc.RegistryStub(channel).ListWorkers(registry_pb2.ListWorkersRequest(), timeout=10)
    return sum(any(a.key == key for a in w.adapters) for w in workers.workers)
