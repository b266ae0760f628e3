"""FleetClient and AsyncFleetClient against a real store + worker + router (tiny Llama, character tokenizer)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
import warnings
from concurrent import futures

import grpc
import pytest

from adapterfleet.common.errors import AdapterFleetError, InvalidArgument, NotFound
from adapterfleet.router.config import RouterConfig
from adapterfleet.sdk import AdapterState, AsyncFleetClient, FleetClient, WorkerStats
from adapterfleet.store.config import Limits, S3Config, StoreConfig
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import WorkerHandle, start_router, start_store
from tests.helpers.tokenizer import save_char_tokenizer

IDS = [5, 6, 7, 9]
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def fleet(redis_server, s3_server, tmp_path_factory):
    """One store, one worker, one router for the whole module; adapter acme/a0 (alias prod) and acme/a1."""
    root = tmp_path_factory.mktemp("sdk_fleet")
    base = make_base_model("llama", root / "base", seed=0)
    save_char_tokenizer(base, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapters = [make_peft_adapter(base, root / f"a{i}", seed=i + 1, r=4, target_modules=["q_proj", "v_proj"])
                    for i in range(2)]
    cfg = StoreConfig(port=0, redis_url=redis_server.url, redis_prefix=f"t{uuid.uuid4().hex[:8]}:",
                      s3=S3Config(endpoint_url=s3_server, bucket=f"t-{uuid.uuid4().hex[:12]}", access_key_id="test",
                                  secret_access_key="test"),
                      data_dir=str(root / "store"), blob_cache_bytes=0, limits=Limits(max_rank=64))
    store_address, _, stop_store = start_store(cfg)
    from adapterfleet.store.client import StoreClient

    with StoreClient(store_address) as c:
        keys = [str(c.push_dir(a, f"acme/a{i}", alias="prod").manifest.key) for i, a in enumerate(adapters)]
    worker = WorkerHandle(WorkerConfig(base_model=str(base), store=store_address, max_slots=4,
                                       disk_dir=str(root / "w0"), announce_every_s=0.2, announce_ttl_s=2.0))
    router_address, router, stop_router = start_router(RouterConfig(store=store_address, poll_s=0.1))
    deadline = time.monotonic() + 10
    while not router.membership.views():
        assert time.monotonic() < deadline, "the worker never showed up in the router's view"
        time.sleep(0.05)

    class Fleet:
        pass

    f = Fleet()
    f.router, f.worker, f.keys = router_address, worker.address, keys
    yield f
    stop_router()
    worker.stop()
    stop_store()


@pytest.fixture
def client(fleet):
    with FleetClient(fleet.router, timeout=60) as c:
        yield c


def test_generate_through_the_router_equals_the_worker(fleet, client):
    via_router = client.generate(IDS, adapter="acme/a0@prod", max_new_tokens=8, stop_ids=[127])
    with FleetClient(fleet.worker, timeout=60) as direct:
        at_worker = direct.generate(IDS, adapter=fleet.keys[0], max_new_tokens=8, stop_ids=[127])
    assert via_router.token_ids == at_worker.token_ids and len(via_router.token_ids) > 0
    assert via_router.adapter_key == fleet.keys[0]
    assert via_router.finish_reason in ("stop", "length") and via_router.prompt_tokens == len(IDS)
    assert HEX32.match(via_router.request_id)
    base = client.generate(IDS, max_new_tokens=8, stop_ids=[127])
    assert base.token_ids != via_router.token_ids and base.adapter_key == ""  # the adapter changes the output


def test_stream_chunks_concatenate_to_generate(client, fleet):
    whole = client.generate("hello world", adapter="acme/a1", max_new_tokens=10, stop_ids=[])
    stream = client.stream("hello world", adapter="acme/a1", max_new_tokens=10, stop_ids=[], request_id="s-1")
    chunks = list(stream)
    assert stream.request_id == "s-1"
    assert tuple(t for c in chunks for t in c.token_ids) == whole.token_ids
    assert "".join(c.text for c in chunks) == whole.text and whole.text
    assert chunks[0].adapter_key == fleet.keys[1] and chunks[-1].finished
    assert chunks[-1].finish_reason == whole.finish_reason == "length"


def test_seeded_sampling_repeats(client):
    runs = [client.generate(IDS, adapter="acme/a0", max_new_tokens=8, temperature=0.9, top_k=20, top_p=0.9,
                            seed=7, stop_ids=[]).token_ids for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 8


def test_score_matches_the_worker(fleet, client):
    scores = client.score(IDS, adapter="acme/a0@prod")
    with FleetClient(fleet.worker) as direct:
        want = direct.score(IDS, adapter=fleet.keys[0])
    assert scores.logprobs == want.logprobs and len(scores.logprobs) == len(IDS) - 1
    assert scores.adapter_key == fleet.keys[0]
    assert scores.total_logprob == pytest.approx(sum(want.logprobs)) and scores.total_logprob < 0
    assert len(client.score("hello", adapter="acme/a0").logprobs) == len("hello") - 1


def test_an_unknown_adapter_is_a_typed_not_found_carrying_the_request_id(client):
    with pytest.raises(NotFound) as err:
        client.generate(IDS, adapter="acme/missing", request_id="req-123")
    assert err.value.request_id == "req-123" and "req-123" in str(err.value) and "acme/missing" in str(err.value)
    with pytest.raises(NotFound) as err:
        client.score(IDS, adapter="acme/missing")
    assert HEX32.match(err.value.request_id)
    with pytest.raises(NotFound):
        list(client.stream(IDS, adapter="acme/missing"))


def test_stats_are_plain_values(fleet, client):
    client.score(IDS, adapter="acme/a1")
    stats = client.stats()
    assert stats.requests >= 1 and 0.0 <= stats.affinity_hit_rate <= 1.0
    assert fleet.keys[1] in {a.key for a in stats.adapters}
    [worker] = stats.workers
    assert worker.address == fleet.worker and worker.healthy


def test_the_async_client_matches_the_sync_one(fleet, client):
    want = client.generate(IDS, adapter="acme/a0", max_new_tokens=6, stop_ids=[])
    want_scores = client.score(IDS, adapter="acme/a1")

    async def run():
        async with AsyncFleetClient(fleet.router, timeout=60) as aclient:
            got = await aclient.generate(IDS, adapter="acme/a0", max_new_tokens=6, stop_ids=[], request_id="a-1")
            chunks = [c async for c in aclient.stream(IDS, adapter="acme/a0", max_new_tokens=6, stop_ids=[])]
            scores = await aclient.score(IDS, adapter="acme/a1")
            with pytest.raises(NotFound) as err:
                await aclient.score(IDS, adapter="acme/missing", request_id="a-2")
            with pytest.raises(NotFound):
                async for _ in aclient.stream(IDS, adapter="acme/missing"):
                    pass
            stats = await aclient.stats()
            return got, chunks, scores, err.value, stats

    got, chunks, scores, error, stats = asyncio.run(run())
    assert got.token_ids == want.token_ids and got.request_id == "a-1" and got.adapter_key == fleet.keys[0]
    assert tuple(t for c in chunks for t in c.token_ids) == want.token_ids
    assert scores.logprobs == want_scores.logprobs
    assert error.request_id == "a-2" and "a-2" in str(error)
    assert stats.requests >= 4


def test_a_workers_adapters_load_pin_list_unload_and_stats(fleet):
    with FleetClient(fleet.worker, timeout=60) as worker:
        worker.unload_adapter("acme/a0")  # whatever earlier tests left there
        worker.unload_adapter("acme/a1")
        assert worker.resident() == []
        state = worker.load_adapter("acme/a0@prod", pin=True)
        assert isinstance(state, AdapterState)
        assert (state.key, state.tier, state.pinned, state.slot >= 0) == (fleet.keys[0], "active", True, True)
        host = worker.load_adapter("acme/a1", tier="host")
        assert (host.key, host.tier, host.slot, host.pinned) == (fleet.keys[1], "host", -1, False)
        assert {a.key: a.tier for a in worker.resident()} == {fleet.keys[0]: "active", fleet.keys[1]: "host"}
        assert worker.pin("acme/a0", False).pinned is False
        stats = worker.worker_stats()
        assert isinstance(stats, WorkerStats) and stats.fingerprint.startswith("sha256:") and stats.max_slots == 4
        assert {a.key for a in stats.adapters} == {fleet.keys[0], fleet.keys[1]}
        assert worker.unload_adapter(fleet.keys[1]) is True and worker.unload_adapter(fleet.keys[1]) is False
        assert [a.key for a in worker.resident()] == [fleet.keys[0]]
        with pytest.raises(InvalidArgument, match="tier 'gpu' is not one of active, host, disk"):
            worker.load_adapter("acme/a0", tier="gpu")
        with pytest.raises(NotFound):
            worker.load_adapter("acme/missing")


def test_the_async_client_has_the_same_worker_calls(fleet):
    async def run():
        async with AsyncFleetClient(fleet.worker, timeout=60) as worker:
            state = await worker.load_adapter("acme/a1", pin=True)
            pinned = await worker.pin("acme/a1", False)
            held = await worker.resident()
            stats = await worker.worker_stats()
            dropped = await worker.unload_adapter("acme/a1")
            return state, pinned, held, stats, dropped

    state, pinned, held, stats, dropped = asyncio.run(run())
    assert state.key == fleet.keys[1] and state.pinned and not pinned.pinned
    assert fleet.keys[1] in {a.key for a in held} and stats.fingerprint.startswith("sha256:") and dropped


def test_a_call_for_the_other_kind_of_server_says_which_it_needs(fleet):
    with FleetClient(fleet.worker, timeout=30) as worker, pytest.raises(AdapterFleetError) as err:
        worker.stats()  # router stats, asked of a worker
    assert err.value.code == "UNIMPLEMENTED"
    assert f"{fleet.worker} does not implement this call: it needs a router" in err.value.message


class Recorder(worker_pb2_grpc.WorkerServicer, router_pb2_grpc.RouterServicer):
    """A stand-in server that records the metadata of every call."""

    def __init__(self):
        self.seen: list[dict[str, str]] = []

    def Generate(self, request, context):
        self.seen.append(dict(context.invocation_metadata()))
        yield worker_pb2.GenerateResponse(token_ids=[1], finished=True, finish_reason="stop")

    def Score(self, request, context):
        self.seen.append(dict(context.invocation_metadata()))
        return worker_pb2.ScoreResponse(logprobs=[-1.0])

    def Stats(self, request, context):
        self.seen.append(dict(context.invocation_metadata()))
        return router_pb2.RouterStats(requests=1)


@pytest.fixture
def recorder():
    rec = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    worker_pb2_grpc.add_WorkerServicer_to_server(rec, server)
    router_pb2_grpc.add_RouterServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec, f"127.0.0.1:{port}"
    server.stop(0)


def test_every_call_sends_a_request_id_and_the_client_metadata(recorder):
    rec, address = recorder
    with FleetClient(address, metadata=[("authorization", "Bearer t")]) as c:
        c.generate([1, 2], request_id="given-id")
        c.score([1, 2])
        list(c.stream([1, 2]))
        c.stats()

    async def run():
        async with AsyncFleetClient(address) as ac:
            await ac.generate([1, 2], request_id="async-id")
            await ac.score([1, 2])

    asyncio.run(run())
    ids = [m.get("x-request-id", "") for m in rec.seen]
    assert ids[0] == "given-id" and ids[4] == "async-id"
    assert all(HEX32.match(i) for i in ids[1:4] + ids[5:]) and len(set(ids)) == len(ids) == 6
    assert all(m.get("authorization") == "Bearer t" for m in rec.seen[:4])


def test_importing_the_sdk_does_not_import_torch_or_peft():
    code = ("import sys; from adapterfleet import AdapterStore, FleetClient, AsyncFleetClient, from_store, "
            "load_adapter_from_store, push_from_peft, NotFound, Incompatible, AliasConflict; "
            "import adapterfleet.v1.worker_pb2; "
            "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_every_name_the_package_exports_resolves():
    import adapterfleet

    assert {"AdapterStore", "FleetClient", "from_store", "NotFound", "Incompatible"} <= set(adapterfleet.__all__)
    for name in adapterfleet.__all__:
        assert getattr(adapterfleet, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adapterfleet.nope  # noqa: B018
