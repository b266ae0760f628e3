"""A base model whose config names a pad/eos id outside its embedding (transformers warns and loads it) still
serves padded batches: the host pads with an id inside the embedding, and padded positions are masked."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from adapterfleet.worker.engine import Engine, GenerateJob, ScoreJob
from adapterfleet.worker.lora import LoraModel
from adapterfleet.worker.model_host import ModelHost, choose_pad
from adapterfleet.worker.sampling import Sampling
from tests.helpers.models import make_base_model
from tests.helpers.servers import start_worker

PROMPTS = [[1, 5, 9, 17, 33, 2, 7], [3, 4], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [40, 41, 42], [8]]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """GPT-2 (its embedding takes no padding_idx, so transformers loads it): pad 500 and the default eos 50256, both
    outside a 128-row embedding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_base_model("gpt2", tmp_path_factory.mktemp("badpad") / "base", seed=0, pad_token_id=500)


def test_the_pad_id_is_the_first_candidate_inside_the_embedding():
    assert choose_pad(500, (50256,), 128) == 0
    assert choose_pad(500, (50256, 7), 128) == 7
    assert choose_pad(3, (7,), 128) == 3
    assert choose_pad(None, (), 128) == 0


def collect(engine: Engine, prompts) -> list[list[int]]:
    outs: list[list[int]] = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def emitter(i):
        def emit(toks, finished, why, logprobs=None):
            outs[i].extend(toks)
            if finished:
                done.release()
        return emit

    def fail(exc):
        raise AssertionError(exc)

    for i, p in enumerate(prompts):
        engine.submit(GenerateJob(list(p), -1, 6, Sampling(), frozenset(), emitter(i), fail))
    engine.start()
    try:
        for _ in prompts:
            assert done.acquire(timeout=60)
    finally:
        engine.stop()
    return outs


def test_a_padded_batch_runs_and_matches_each_row_alone(base):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = ModelHost.load(base)
    assert host.model.config.pad_token_id == 500 and host.eos_ids == (50256,)
    assert host.pad_id == 0
    lora = LoraModel(host.model, max_slots=1)

    def engine() -> Engine:
        return Engine(host.model, lora, pad_id=host.pad_id, device=host.device)

    together = collect(engine(), PROMPTS)  # queued before the engine starts: one left-padded prefill
    alone = [collect(engine(), [p])[0] for p in PROMPTS]
    assert together == alone and all(len(t) == 6 for t in together)
    scores: list = []
    ready = threading.Semaphore(0)
    eng = engine()
    for p in PROMPTS[:3]:  # right-padded scoring batch
        eng.submit(ScoreJob([*p, 2], -1, lambda r: (scores.append(r), ready.release())))
    eng.start()
    try:
        for _ in range(3):
            assert ready.acquire(timeout=60)
    finally:
        eng.stop()
    assert all(isinstance(s, list) for s in scores)


def test_a_worker_on_that_base_serves_concurrent_requests(store, base, tmp_path):
    cfg = WorkerConfig(base_model=str(base), store=store.address, max_slots=1, disk_dir=str(tmp_path / "cache"))
    address, _core, stop = start_worker(cfg)
    try:
        stub = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(address))
        requests = [worker_pb2.GenerateRequest(prompt_ids=PROMPTS[i % len(PROMPTS)], max_new_tokens=5)
                    for i in range(12)]
        alone = [[t for c in stub.Generate(r) for t in c.token_ids] for r in requests]
        barrier = threading.Barrier(len(requests))

        def call(r):
            barrier.wait()
            return [t for c in stub.Generate(r) for t in c.token_ids]

        with ThreadPoolExecutor(len(requests)) as pool:
            assert list(pool.map(call, requests)) == alone
        scored = [stub.Score(worker_pb2.ScoreRequest(token_ids=[*p, 3])) for p in PROMPTS]
        assert [len(s.logprobs) for s in scored] == [len(p) for p in PROMPTS]
    finally:
        stop()
