"""Every field checked where it enters the worker: refusals are INVALID_ARGUMENT naming the field, with a short
echo; odd but valid values (temperature 1e-40, top_p 0) are served; one bad request among 50 concurrent ones fails
alone and its batch-mates get exactly the tokens of an undisturbed run."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adapterfleet.v1 import worker_pb2


@pytest.fixture
def worker(char_worker):
    stub, core, key, _ = char_worker
    return stub, core, key


def sampling(**kw) -> worker_pb2.SamplingParams:
    return worker_pb2.SamplingParams(**kw)


def req(**kw) -> worker_pb2.GenerateRequest:
    kw.setdefault("prompt_ids", [5, 6, 7])
    kw.setdefault("max_new_tokens", 8)
    return worker_pb2.GenerateRequest(**kw)


REFUSED = [
    ("sampling.temperature", req(sampling=sampling(temperature=math.nan))),
    ("sampling.temperature", req(sampling=sampling(temperature=math.inf))),
    ("sampling.temperature", req(sampling=sampling(temperature=-1))),
    ("sampling.temperature", req(sampling=sampling(temperature=1000))),
    ("sampling.top_p", req(sampling=sampling(temperature=1, top_p=5))),
    ("sampling.top_p", req(sampling=sampling(temperature=1, top_p=-0.5))),
    ("sampling.top_p", req(sampling=sampling(temperature=1, top_p=math.nan))),
    ("sampling.top_k", req(sampling=sampling(temperature=1, top_k=1_000_000))),
    ("sampling.repetition_penalty", req(sampling=sampling(repetition_penalty=-1))),
    ("sampling.repetition_penalty", req(sampling=sampling(repetition_penalty=math.nan))),
    ("sampling.repetition_penalty", req(sampling=sampling(repetition_penalty=11))),
    ("sampling.presence_penalty", req(sampling=sampling(presence_penalty=2.5))),
    ("sampling.presence_penalty", req(sampling=sampling(presence_penalty=math.inf))),
    ("sampling.frequency_penalty", req(sampling=sampling(frequency_penalty=-3))),
    ("max_new_tokens", req(max_new_tokens=100_000)),
    ("prompt_ids", req(prompt_ids=[999])),
    ("positions", req(prompt_ids=[5] * 120, max_new_tokens=16)),
    ("stop_ids", req(stop_ids=list(range(65)))),
    ("stop strings", req(stop=["x"] * 17)),
    ("stop string", req(stop=[""])),
    ("stop string", req(stop=["y" * 10_000])),
    ("top_logprobs", req(logprobs=True, top_logprobs=21)),
    ("logprobs", req(top_logprobs=3)),
    ("routing_key", req(routing_key="k" * 1000)),
    ("prompt", req(prompt_ids=[], prompt="z" * 1001)),
    ("resume_ids", req(resume_ids=[999])),
    ("resume_ids", req(resume_ids=[5] * 8)),
    ("prompt", req(prompt_ids=[], prompt="")),
]


@pytest.mark.parametrize(("field", "request_"), REFUSED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(REFUSED)])
def test_bad_generate_fields_are_invalid_argument_naming_the_field(worker, field, request_):
    stub, core, _ = worker
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request_))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert field in err.value.details()
    assert len(err.value.details()) < 300  # a short echo, never the whole value
    assert core.engine.stats.requests == 0  # refused before the engine


def test_bad_score_fields_are_invalid_argument(worker):
    stub, _, _ = worker
    for request, field in ((worker_pb2.ScoreRequest(token_ids=[1, 999]), "token_ids"),
                           (worker_pb2.ScoreRequest(token_ids=[1]), "2 tokens"),
                           (worker_pb2.ScoreRequest(token_ids=[1] * 129), "positions"),
                           (worker_pb2.ScoreRequest(text="z" * 1001), "text"),
                           (worker_pb2.ScoreRequest(token_ids=[1, 2], routing_key="k" * 1000), "routing_key")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def tokens(stub, request) -> list[int]:
    return [t for c in stub.Generate(request) for t in c.token_ids]


def test_tiny_temperatures_are_greedy_and_zero_top_p_is_off(worker):
    stub, _, key = worker
    greedy = tokens(stub, req(adapter=key, stop_ids=[0]))
    assert tokens(stub, req(adapter=key, stop_ids=[0], sampling=sampling(temperature=1e-40))) == greedy
    assert tokens(stub, req(adapter=key, stop_ids=[0], sampling=sampling(temperature=1e-6, seed=3,
                                                                          has_seed=True))) == greedy
    sampled = req(adapter=key, stop_ids=[0], sampling=sampling(temperature=0.8, top_p=0, top_k=79, seed=3,
                                                                has_seed=True))
    chunks = list(stub.Generate(sampled))
    assert chunks[-1].finished and chunks[-1].finish_reason in ("stop", "length")  # served, not refused


def test_one_bad_request_among_50_concurrent_fails_alone(worker):
    stub, core, key = worker
    good = [req(adapter=key if i % 3 else "", prompt_ids=[5 + i % 40, 6 + i % 30, 7], max_new_tokens=6 + i % 5,
                stop_ids=[0]) for i in range(49)]
    bad = req(sampling=sampling(temperature=math.nan))
    alone = [tokens(stub, r) for r in good]
    requests = [*good[:20], bad, *good[20:]]
    barrier = threading.Barrier(len(requests))

    def call(r):
        barrier.wait()
        try:
            return tokens(stub, r)
        except grpc.RpcError as err:
            return err

    batches = core.engine.stats.batches
    with ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(call, requests))
    failures = [r for r in replies if isinstance(r, grpc.RpcError)]
    assert len(failures) == 1 and replies[20] is failures[0]
    assert failures[0].code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in failures[0].details()
    assert replies[:20] + replies[21:] == alone
    assert core.engine.stats.batches - batches < len(good)  # they really shared batches
