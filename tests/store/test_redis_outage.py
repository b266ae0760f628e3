"""Redis stopped and started again under a running store (its own redis-server, restarted on the same port): every
call that needs Redis is UNAVAILABLE naming Redis, never INTERNAL; everything recovers once Redis is back; a Watch
rides out a restart from its cursor (or ends UNAVAILABLE when the outage lasts too long); pushes cut by a restart
leave no partial version."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import grpc
import pytest

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.errors import AdapterFleetError, Unavailable
from adapterfleet.store.client import StoreClient
from adapterfleet.store.config import Limits, StoreConfig
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, store_pb2
from tests.helpers.redis_proc import RestartableRedis
from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter


@pytest.fixture
def redis_proc(tmp_path):
    proc = RestartableRedis(tmp_path / "redis").start()
    yield proc
    proc.stop()


@pytest.fixture
def outage_config(redis_proc, s3_config, tmp_path) -> StoreConfig:
    return StoreConfig(port=0, redis_url=redis_proc.url, s3=s3_config, data_dir=str(tmp_path / "store"),
                       chunk_size=256 << 10, blob_cache_bytes=0, watch_outage_s=30.0,
                       limits=Limits(max_file_bytes=256 << 20, max_rank=64))


@pytest.fixture
def store_on(outage_config):
    """start(cfg) -> a client of a store on that config; all stopped at the end."""
    stops, clients = [], []

    def start(cfg: StoreConfig = outage_config) -> StoreClient:
        address, _, stop = start_store(cfg)
        stops.append(stop)
        clients.append(StoreClient(address))
        return clients[-1]

    yield start
    for c in clients:
        c.close()
    for stop in stops:
        stop()


def unavailable(fn, *args, **kw) -> str:
    with pytest.raises(AdapterFleetError) as err:
        fn(*args, **kw)
    assert isinstance(err.value, Unavailable), (err.value.code, err.value.message)
    return err.value.message


def test_every_call_that_needs_redis_is_unavailable_and_recovers(store_on, redis_proc, tmp_path):
    c = store_on()
    pushed = c.push_dir(write_adapter(tmp_path / "a"), "t/a", alias="prod").manifest
    registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(c.address, options=CHANNEL_OPTIONS))
    redis_proc.stop()

    calls = {
        "resolve alias": lambda: c.resolve("t/a@prod"),
        "resolve version": lambda: c.resolve("t/a@1"),
        "resolve latest": lambda: c.resolve("t/a"),
        "resolve digest": lambda: c.resolve(str(pushed.key)),
        "ls": c.list_adapters,
        "versions": lambda: c.list_versions("t/a"),
        "fetch": lambda: c.fetch("t/a@1"),
        "pull": lambda: c.pull("t/a@prod", tmp_path / "pulled"),
        "watch": lambda: next(iter(c.watch(cursor=""))),
        "set alias": lambda: c.set_alias("t/a", "canary", ((1, 100),)),
        "delete alias": lambda: c.delete_alias("t/a", "prod"),
        "yank": lambda: c.yank("t/a", 1),
        "gc": lambda: c.collect_garbage(min_age=0),
        "push": lambda: c.push_dir(write_adapter(tmp_path / "b", seed=1), "t/b"),
    }
    for what, call in calls.items():
        message = unavailable(call)
        assert f"Redis at 127.0.0.1:{redis_proc.port} is unreachable" in message, (what, message)
    for rpc, request in (("ListWorkers", registry_pb2.ListWorkersRequest()),
                         ("Announce", registry_pb2.WorkerInfo(id="w1", address="127.0.0.1:1"))):
        with pytest.raises(grpc.RpcError) as err:
            getattr(registry, rpc)(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Redis at" in err.value.details(), rpc
    # what needs only S3 still works
    asked = store_pb2.MissingBlobsRequest(sha256=[f.sha256 for f in pushed.files])
    assert list(c._call("MissingBlobs", asked).sha256) == []

    redis_proc.start()
    assert c.resolve("t/a@prod").key == str(pushed.key)
    assert [a.name for a in c.list_adapters()] == ["t/a"]
    _, files = c.fetch("t/a@1")
    assert files["adapter_config.json"] == (tmp_path / "a" / "adapter_config.json").read_bytes()
    assert c.push_dir(write_adapter(tmp_path / "b", seed=1), "t/b").created


def test_watch_resumes_from_its_cursor_across_a_redis_restart(store_on, redis_proc, tmp_path):
    c = store_on()
    c.push_dir(write_adapter(tmp_path / "a"), "t/a")
    cursor = next(iter(c.watch(cursor="0"))).cursor
    got: list = []
    watcher = threading.Thread(target=lambda: got.append(next(iter(c.watch(cursor=cursor)))), daemon=True)
    watcher.start()
    redis_proc.stop()
    watcher.join(1.0)  # the stream is waiting for Redis, not ended
    assert watcher.is_alive() and not got
    redis_proc.start()
    c.push_dir(write_adapter(tmp_path / "b", seed=2), "t/a")
    watcher.join(30)
    assert got and got[0].type == "VERSION_PUSHED" and got[0].version == 2


def test_watch_ends_unavailable_when_redis_stays_down(store_on, outage_config, redis_proc, tmp_path):
    c = store_on(replace(outage_config, watch_outage_s=1.0))
    c.push_dir(write_adapter(tmp_path / "a"), "t/a")
    cursor = next(iter(c.watch(cursor="0"))).cursor
    outcome: list = []

    def watch() -> None:
        try:
            outcome.extend(c.watch(cursor=cursor))
        except AdapterFleetError as err:
            outcome.append(err)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    redis_proc.stop()
    watcher.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable), outcome
    assert "Redis at" in outcome[0].message


def test_a_redis_restart_during_pushes_leaves_no_partial_version(store_on, redis_proc, tmp_path):
    c = store_on()
    dirs = [write_adapter(tmp_path / f"d{i}", seed=i) for i in range(40)]
    outcomes: dict[int, object] = {}

    def pusher(k: int) -> None:
        for i in range(k, len(dirs), 4):
            try:
                outcomes[i] = c.push_dir(dirs[i], "t/many").manifest
            except AdapterFleetError as err:
                outcomes[i] = err

    threads = [threading.Thread(target=pusher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    while len(outcomes) < 4 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    redis_proc.stop()  # while pushes are streaming, leasing and committing
    time.sleep(0.3)
    redis_proc.start()
    for t in threads:
        t.join(120)
    assert len(outcomes) == len(dirs)
    failed = [o for o in outcomes.values() if isinstance(o, AdapterFleetError)]
    assert failed, "the restart hit no push; the test proves nothing"
    assert all(isinstance(o, Unavailable) for o in failed), [(o.code, o.message) for o in failed]
    versions, _ = c.list_versions("t/many")
    assert [m.version for m in versions] == list(range(1, len(versions) + 1))  # no gaps
    acknowledged = {o.digest for o in outcomes.values() if not isinstance(o, AdapterFleetError)}
    assert acknowledged <= {m.digest for m in versions}
    for m in versions:  # every version is whole: each of its blobs is in S3 with the promised bytes
        manifest, files = c.fetch(f"t/many@{m.version}")
        assert sorted(files) == sorted(f.name for f in manifest.files)
