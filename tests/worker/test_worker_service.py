"""A real worker (gRPC on port 0) fetching PEFT adapters from a real store, against PEFT's own numbers."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch

from adapterfleet.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter
from tests.helpers.servers import start_worker

PROMPTS = [[1, 5, 9, 17, 33, 2, 7], [3, 4], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [40, 41, 42, 43, 44]]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    base = make_base_model("llama", root / "base", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapters = {
            "plain": make_peft_adapter(base, root / "plain", seed=1, r=4, target_modules=["q_proj", "v_proj"]),
            "wide": make_peft_adapter(base, root / "wide", seed=2, r=8, use_rslora=True,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]),
            "dora": make_peft_adapter(base, root / "dora", seed=3, r=4, use_dora=True,
                                      target_modules=["q_proj", "v_proj"]),
        }
    return root, base, adapters


@pytest.fixture
def fleet(store, llama, tmp_path):
    _root, base, adapters = llama
    client = store.client()
    keys = {name: str(client.push_dir(path, f"acme/{name}").manifest.key) for name, path in adapters.items()}
    cfg = WorkerConfig(base_model=str(base), store=store.address, max_slots=4, disk_dir=str(tmp_path / "cache"))
    address, core, stop = start_worker(cfg)
    channel = grpc.insecure_channel(address)
    yield worker_pb2_grpc.WorkerStub(channel), core, keys, store
    channel.close()
    stop()


def peft_logprobs(base_dir, adapter_dir, ids: list[int]) -> np.ndarray:
    from peft import PeftModel

    model = load_base_model(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).numpy()


def peft_greedy(base_dir, adapter_dir, ids: list[int], n: int) -> list[int]:
    from peft import PeftModel

    model = load_base_model(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_score_matches_peft_in_a_mixed_batch(fleet, llama):
    stub, core, keys, _ = fleet
    _, base, adapters = llama
    rows = [(name, PROMPTS[i % len(PROMPTS)]) for i, name in enumerate(["plain", "", "wide", "dora", "plain", ""])]
    for name in ("plain", "wide", "dora"):  # warm: load once so the scoring requests batch together
        stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=keys[name]))
    batches_before = core.engine.stats.batches
    barrier = threading.Barrier(len(rows))

    def score(row):
        name, ids = row
        barrier.wait()
        return stub.Score(worker_pb2.ScoreRequest(adapter=keys.get(name, ""), token_ids=ids))

    with ThreadPoolExecutor(len(rows)) as pool:
        replies = list(pool.map(score, rows))
    assert core.engine.stats.batches - batches_before < len(rows)  # some rows shared a batch
    for (name, ids), reply in zip(rows, replies, strict=True):
        want = peft_logprobs(base, adapters.get(name), ids)
        got = np.array(reply.logprobs)
        assert got.shape == (len(ids) - 1,)
        assert np.max(np.abs(got - want)) <= 1e-4, name
        if name:
            assert reply.adapter_key == keys[name]
            assert np.max(np.abs(got - peft_logprobs(base, None, ids))) > 1e-3  # the adapter really changes it


def test_greedy_generate_matches_peft_token_for_token(fleet, llama):
    stub, _, keys, _ = fleet
    _, base, adapters = llama
    for name in ("plain", "dora", ""):
        ids = PROMPTS[0]
        chunks = list(stub.Generate(worker_pb2.GenerateRequest(adapter=keys.get(name, ""), prompt_ids=ids,
                                                               max_new_tokens=8, stop_ids=[127])))
        got = [t for c in chunks for t in c.token_ids]
        assert chunks[-1].finished
        want = peft_greedy(base, adapters.get(name), ids, 8)
        want = want[: want.index(127) + 1] if 127 in want else want
        assert got == want, name


def test_concurrent_mixed_generations_match_one_by_one(fleet):
    stub, _, keys, _ = fleet
    requests = [worker_pb2.GenerateRequest(adapter=keys.get(name, ""), prompt_ids=PROMPTS[i % 4], max_new_tokens=6,
                                           stop_ids=[127])
                for i, name in enumerate(["plain", "wide", "", "dora", "wide", "plain"])]
    alone = [[t for c in stub.Generate(r) for t in c.token_ids] for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: [t for c in stub.Generate(r) for t in c.token_ids], requests))
    assert together == alone


def test_sampling_with_a_seed_is_reproducible(fleet):
    stub, _, keys, _ = fleet
    req = worker_pb2.GenerateRequest(adapter=keys["plain"], prompt_ids=PROMPTS[1], max_new_tokens=10,
                                     sampling=worker_pb2.SamplingParams(temperature=1.5, top_k=50, top_p=0.9,
                                                                        seed=7, has_seed=True))
    runs = [[t for c in stub.Generate(req) for t in c.token_ids] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) >= 1


def test_concurrent_cold_requests_fetch_once(fleet):
    stub, _core, keys, _ = fleet
    req = worker_pb2.ScoreRequest(adapter=keys["wide"], token_ids=PROMPTS[2])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: stub.Score(req), range(8)))
    stats = stub.Stats(worker_pb2.StatsRequest())
    assert stats.cold_loads == 1
    assert [a.key for a in stats.adapters] == [keys["wide"]]


def test_load_unload_cycles_free_memory(fleet):
    stub, core, keys, _ = fleet
    lora = core.cache._b._lora
    assert lora.nbytes() == 0
    for _ in range(3):
        for name in ("plain", "wide", "dora"):
            stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=keys[name]))
        assert lora.nbytes() > 0
        for name in ("plain", "wide", "dora"):
            assert stub.UnloadAdapter(worker_pb2.UnloadAdapterRequest(ref=keys[name])).unloaded
        assert lora.nbytes() == 0 and core.cache.entries() == []


def test_in_flight_request_finishes_on_the_version_it_started_with(fleet, llama):
    stub, _, keys, store = fleet
    client = store.client()
    client.set_alias("acme/plain", "prod", ((1, 100),))
    stream = stub.Generate(worker_pb2.GenerateRequest(adapter="acme/plain@prod", prompt_ids=PROMPTS[0],
                                                      max_new_tokens=40, stop_ids=[127]))
    first = next(stream)
    _, _, adapters = llama
    v2 = client.push_dir(adapters["wide"], "acme/plain").manifest  # new content under the same name
    client.set_alias("acme/plain", "prod", ((v2.version, 100),))
    rest = list(stream)
    assert first.adapter_key == keys["plain"] and (rest[-1].finished if rest else first.finished)
    after = stub.Score(worker_pb2.ScoreRequest(adapter="acme/plain@prod", token_ids=PROMPTS[1]))
    assert after.adapter_key == str(v2.key)


def test_bad_requests_are_invalid_argument(fleet):
    stub, _, _keys, _ = fleet
    for req in (worker_pb2.GenerateRequest(prompt_ids=[999999]), worker_pb2.GenerateRequest(prompt="hi"),
                worker_pb2.GenerateRequest(prompt_ids=[1], max_new_tokens=100000)):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(req))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(worker_pb2.ScoreRequest(adapter="acme/nothing", token_ids=[1, 2]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_resumed_generation_continues_exactly_where_it_stopped(fleet):
    stub, _, keys, _ = fleet
    req = worker_pb2.GenerateRequest(adapter=keys["wide"], prompt_ids=PROMPTS[2], max_new_tokens=8, stop_ids=[127])
    whole = [t for c in stub.Generate(req) for t in c.token_ids]
    req.resume_ids.extend(whole[:3])
    rest = [t for c in stub.Generate(req) for t in c.token_ids]
    assert whole[:3] + rest == whole


def test_worker_announces_itself_and_its_adapters_to_the_registry(fleet):
    import time

    from adapterfleet.v1 import registry_pb2, registry_pb2_grpc

    stub, core, keys, store = fleet
    stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=keys["plain"]))
    registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(store.address))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = registry.ListWorkers(registry_pb2.ListWorkersRequest()).workers
        if workers and any(a.key == keys["plain"] and a.tier == common_pb2.TIER_ACTIVE for a in workers[0].adapters):
            break
        time.sleep(0.2)
    [info] = workers
    assert info.fingerprint == core.host.fingerprint and info.capacity == 4
    assert {a.key: a.tier for a in info.adapters}[keys["plain"]] == common_pb2.TIER_ACTIVE


def test_load_adapter_to_a_tier_travels_as_the_tier_enum(fleet):
    stub, _, keys, _ = fleet
    state = stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=keys["wide"], tier=common_pb2.TIER_DISK))
    assert state.tier == common_pb2.TIER_DISK and state.slot == -1
    state = stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=keys["wide"], tier=common_pb2.TIER_HOST))
    assert state.tier == common_pb2.TIER_HOST and state.slot == -1
    state = stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=keys["wide"]))  # unspecified: active
    assert state.tier == common_pb2.TIER_ACTIVE and state.slot >= 0
    listed = stub.ListResident(worker_pb2.ListResidentRequest()).adapters
    assert [(a.key, a.tier) for a in listed] == [(keys["wide"], common_pb2.TIER_ACTIVE)]


def test_a_cold_ref_resolves_with_urls_and_loads_without_a_fetch_call_a_hot_one_resolves_plainly(fleet):
    stub, core, keys, _store = fleet
    client = core._store  # the worker's own store client: it fetches, in the cache's thread
    resolver = core.resolver  # resolves on the worker's event loop and hands the URLs to the client
    assert resolver is not None
    asked: list[bool] = []
    resolve, fetch = resolver.resolve, client._stub.Fetch
    fetches: list[object] = []

    async def spy(*a, **kw):
        asked.append(kw.get("direct", False))
        return await resolve(*a, **kw)

    resolver.resolve = spy
    client._stub.Fetch = lambda *a, **kw: fetches.append(a) or fetch(*a, **kw)
    for _ in range(2):
        stub.Score(worker_pb2.ScoreRequest(adapter="acme/plain", token_ids=PROMPTS[0]))
    assert asked == [True, False]  # the second time, its key is in a slot: no URLs asked for
    assert fetches == []  # the cold load GOT the files by the URLs the resolve answered
    assert client.direct.stats["files"] >= 2 and client.direct.stats["fallbacks"] == 0
    assert stub.Stats(worker_pb2.StatsRequest()).cold_loads == 1
    stub.Score(worker_pb2.ScoreRequest(adapter=keys["wide"], token_ids=PROMPTS[0]))  # by key: no resolve at all
    assert asked == [True, False] and len(fetches) == 1
