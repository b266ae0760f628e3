"""Operations on a real fleet (store, worker, router on port 0): Prometheus metrics scraped over HTTP, request ids in
JSON logs across the router -> worker hop, and drain on shutdown."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
import time
import urllib.request
import warnings

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.common.logs import JsonFormatter
from adapterfleet.common.metrics import MetricsConfig
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.proxy import verdict_of
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import WorkerHandle, start_router, start_store


def metrics_cfg() -> MetricsConfig:
    return MetricsConfig(port=free_port(), host="127.0.0.1")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a real GET /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(port: int, name: str, expected: float, **labels) -> dict:
    """A scrape in which sample ``name{labels}`` has reached ``expected`` (calls are counted as they finish, just
    after the caller has seen their status)."""
    deadline = time.monotonic() + 10
    while value(samples := scrape(port), name, **labels) != expected:
        assert time.monotonic() < deadline, (f"{name}{labels} = {value(samples, name, **labels)}, not {expected}",
                                             [(k, v) for k, v in samples.items() if k[0] == name])
        time.sleep(0.05)
    return samples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapter = make_peft_adapter(base, root / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    return base, adapter


@pytest.fixture
def fleet(store_config, tiny, tmp_path):
    base, adapter = tiny
    store_cfg = dataclasses.replace(store_config, metrics=metrics_cfg())
    store_addr, _store_core, stop_store = start_store(store_cfg)
    from adapterfleet.store.client import StoreClient

    with StoreClient(store_addr) as client:
        key = str(client.push_dir(adapter, "acme/ops", alias="prod").manifest.key)
    worker = WorkerHandle(WorkerConfig(base_model=str(base), store=store_addr, max_slots=2,
                                       disk_dir=str(tmp_path / "w"), announce_every_s=0.2, announce_ttl_s=2.0,
                                       metrics=metrics_cfg()))
    router_cfg = RouterConfig(store=store_addr, poll_s=0.1, metrics=metrics_cfg())
    router_addr, router_core, stop_router = start_router(router_cfg)
    channel = grpc.insecure_channel(router_addr)
    api = worker_pb2_grpc.WorkerStub(channel)
    f = type("Fleet", (), {})()
    f.api, f.key, f.worker, f.router_core = api, key, worker, router_core
    f.ports = {"store": store_cfg.metrics.port, "worker": worker.worker.metrics_port,
               "router": router_cfg.metrics.port}
    deadline = time.monotonic() + 10
    while not router_core.membership.views():
        assert time.monotonic() < deadline, "the worker never joined the router"
        time.sleep(0.05)
    yield f
    channel.close()
    stop_router()
    worker.stop()
    stop_store()


def generate(api, adapter: str, n: int = 4, metadata=()):
    return list(api.Generate(worker_pb2.GenerateRequest(adapter=adapter, prompt_ids=[1, 2, 3], max_new_tokens=n),
                             metadata=metadata, timeout=60))


def test_every_service_exports_requests_cache_affinity_and_bytes(fleet):
    for _ in range(3):
        generate(fleet.api, "acme/ops@prod")
    generate(fleet.api, "")  # the base model
    with pytest.raises(grpc.RpcError) as err:
        generate(fleet.api, "acme/missing@prod")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # a failed call is counted just after its status is sent: wait for it to land
    router = eventually(fleet.ports["router"], "adapterfleet_requests_total", 1, service="router",
                        method="Generate", adapter="acme/missing", code="NOT_FOUND")
    assert value(router, "adapterfleet_requests_total", service="router", method="Generate", adapter="acme/ops",
                 code="OK") == 3
    assert value(router, "adapterfleet_requests_total", service="router", method="Generate", adapter="_base",
                 code="OK") == 1
    assert value(router, "adapterfleet_requests_total", service="router", method="Generate",
                 adapter="acme/missing", code="NOT_FOUND") == 1
    assert value(router, "adapterfleet_request_seconds_count", service="router", method="Generate",
                 adapter="acme/ops") == 3
    # the first request had to load the adapter, the next two found it: 2 of 3
    assert value(router, "adapterfleet_router_placements_total", result="miss") == 1
    assert value(router, "adapterfleet_router_placements_total", result="hit") == 2
    assert value(router, "adapterfleet_router_affinity_hit_rate") == pytest.approx(2 / 3)
    assert value(router, "adapterfleet_router_workers") == 1

    # the router resolved acme/missing itself: that call never reached the worker
    worker = eventually(fleet.ports["worker"], "adapterfleet_requests_total", 3, service="worker",
                        method="Generate", adapter="acme/ops", code="OK")
    assert not [k for k in worker if ("adapter", "acme/missing") in k[1]]
    # the router lets a finished stream end on its own: no worker call is counted as CANCELLED
    assert not [k for k in worker if ("code", "CANCELLED") in k[1]], worker
    assert value(worker, "adapterfleet_worker_cache_requests_total", result="miss") == 1
    assert value(worker, "adapterfleet_worker_cache_requests_total", result="hit") == 2
    assert value(worker, "adapterfleet_worker_cache_loads_total", source="store") == 1
    assert value(worker, "adapterfleet_worker_adapter_load_seconds_count") == 1
    assert value(worker, "adapterfleet_worker_adapter_load_seconds_sum") > 0
    assert value(worker, "adapterfleet_worker_tokens_generated_total") == 16
    assert value(worker, "adapterfleet_worker_adapters_resident") == 1

    store = scrape(fleet.ports["store"])
    assert value(store, "adapterfleet_store_pushes_total", outcome="created") == 1
    pushed = value(store, "adapterfleet_store_bytes_total", direction="received")
    assert pushed > 0
    assert value(worker, "adapterfleet_worker_fetched_bytes_total") == pushed
    # the worker read the files from S3 by presigned URL: none of their bytes crossed the store
    assert value(store, "adapterfleet_store_bytes_total", direction="sent") == 0
    assert value(store, "adapterfleet_store_presigned_urls_total") >= 2
    assert value(store, "adapterfleet_requests_total", service="store", method="Fetch", adapter="acme/ops",
                 code="OK") == 1


def test_request_id_follows_the_call_into_the_worker_logs(fleet):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("adapterfleet.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(grpc.RpcError) as err:  # the worker refuses it, and the router passes that on
            list(fleet.api.Generate(worker_pb2.GenerateRequest(adapter="acme/ops@prod", prompt_ids=[1, 2],
                                                               max_new_tokens=1_000_000),
                                    metadata=(("x-request-id", "req-abc-123"),), timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(0.2)  # access lines are written as calls finish, just after the caller sees the status
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    # the router's access line, and the worker's: the router forwarded the same id
    ours = [line for line in lines if line.get("request_id") == "req-abc-123"]
    assert len(ours) >= 2, lines
    assert {line["code"] for line in ours} == {"INVALID_ARGUMENT"}
    assert {line["adapter"] for line in ours} == {"acme/ops@prod", fleet.key}  # router: the ref; worker: the key


def test_drain_finishes_in_flight_streams_and_refuses_new_work(store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", tmp_path / "long", seed=0, max_position_embeddings=4096)
    worker = WorkerHandle(WorkerConfig(base_model=str(base), store=store.address, disk_dir=str(tmp_path / "w")))
    channel = grpc.insecure_channel(worker.address)
    api = worker_pb2_grpc.WorkerStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    first_token = threading.Event()
    out: dict = {"tokens": []}

    def long_stream():  # the base model, thousands of tokens: seconds of work still to do when the drain starts
        for msg in api.Generate(worker_pb2.GenerateRequest(prompt_ids=[1, 2, 3], max_new_tokens=2000,
                                                           stop_ids=[100000]), timeout=120):
            out["tokens"] += msg.token_ids
            out["reason"] = msg.finish_reason or out.get("reason")
            first_token.set()

    reader = threading.Thread(target=long_stream)
    reader.start()
    assert first_token.wait(30)
    drain = threading.Thread(target=lambda: worker._thread.run(worker.worker.stop(grace=60.0), 90))
    drain.start()
    deadline = time.monotonic() + 10
    while True:  # readiness goes down first
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        except grpc.RpcError:
            status = "refused"
        if status != health_pb2.HealthCheckResponse.SERVING:
            break
        assert time.monotonic() < deadline, "readiness never went down"
    assert worker.core.inflight == 1, "the stream finished before the drain began: make it longer"
    with pytest.raises(grpc.RpcError) as err:  # new work is refused while the old finishes
        generate(api, "", n=2)
    # the worker's own refusal (UNAVAILABLE), or gRPC's once the server is stopping (CANCELLED): routers retry both
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert verdict_of(err.value).fault.retry
    reader.join(90)
    drain.join(90)
    worker._up = False
    worker._thread.close()
    channel.close()
    assert len(out["tokens"]) == 2000 and out["reason"] == "length"
