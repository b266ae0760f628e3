"""One bad row fails alone: rows that make a batched forward raise, rows whose logits are NaN and rows whose
sampling raises fail with a typed error, and every batch-mate gets exactly the tokens of an undisturbed run.

Faults are injected with forward hooks on a real model: a token id that makes the embedding raise (at prefill
when it is in a prompt, at a decode step when a row generates it), a second decoder layer that raises after the
first one has already appended to the KV cache, an output layer that writes NaN into one row's logits.
"""

from __future__ import annotations

import math
import threading
import warnings
from contextlib import contextmanager

import pytest
import torch

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.worker.engine import Engine, GenerateJob, ScoreJob
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.sampling import Sampling
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter
from tests.helpers.outputs import Collected

PROMPTS = [[5, 9, 13], [3, 4], [11, 12, 13, 14, 15, 16], [40, 41, 42, 43], [7], [20, 30, 40, 50, 60],
           [99, 98], [1, 2, 3, 4, 5, 6, 7, 8], [64, 65], [33, 34, 35], [70, 71, 72, 73, 74], [17, 18]]
N = 10


@pytest.fixture(scope="module")
def model_and_lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapter = make_peft_adapter(base, root / "a", seed=3, r=4, target_modules=["q_proj", "v_proj"])
    model = load_base_model(base)
    lora = LoraModel(model, max_slots=2)
    lora.install(0, AdapterWeights.from_dir(adapter))
    return model, lora


def run_together(model, lora, jobs: list[tuple[list[int], int, Sampling]]) -> list[Collected]:
    """All jobs in one batch: queued before the engine starts, so its first take holds every one of them."""
    engine = Engine(model, lora, pad_id=0, device=model.device, max_batch=32)
    results = [Collected() for _ in jobs]
    for (prompt, slot, sampling), r in zip(jobs, results, strict=True):
        engine.submit(GenerateJob(prompt, slot, N, sampling, frozenset(), r.emit, r.fail))
    engine.start()
    try:
        assert all(r.done.wait(60) for r in results)
        assert engine.stats.batches == 1
    finally:
        engine.stop()
    return results


def specs(sampling_of=lambda i: Sampling()) -> list[tuple[list[int], int, Sampling]]:
    return [(p, 0 if i % 2 else -1, sampling_of(i)) for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def undisturbed(model_and_lora) -> list[list[int]]:
    results = run_together(*model_and_lora, specs())
    assert all(r.error is None and len(r.tokens) == N for r in results)
    return [r.tokens for r in results]


@contextmanager
def poisoned(model, token: int, how: str):
    """``how``: "embedding" raises in the embedding when ``token`` is among the inputs; "layer" raises in the second
    decoder layer (the first has appended to the cache); "nan" makes the logits of rows holding it NaN."""
    rows: dict[str, torch.Tensor] = {}

    def on_embedding(module, args):
        ids = args[0]
        rows["hit"] = (ids == token).any(-1)  # [B]
        if how == "embedding" and bool(rows["hit"].any()):
            raise RuntimeError(f"poisoned token {token}")

    def on_layer(module, args, kwargs):
        if bool(rows["hit"].any()):
            raise RuntimeError(f"poisoned token {token} (second layer)")

    def on_head(module, args, output):
        output = output.clone()
        output[rows["hit"]] = float("nan")
        return output

    handles = [model.get_input_embeddings().register_forward_pre_hook(on_embedding)]
    if how == "layer":
        handles.append(model.model.layers[1].register_forward_pre_hook(on_layer, with_kwargs=True))
    if how == "nan":
        handles.append(model.lm_head.register_forward_hook(on_head))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def assert_only(results, undisturbed, victim: int, code: str) -> None:
    failed = [i for i, r in enumerate(results) if r.error is not None]
    assert failed == [victim], [repr(r.error) for r in results if r.error]
    err = results[victim].error
    assert isinstance(err, AdapterFleetError) and err.code == code, repr(err)
    assert "the other requests in its batch went on" in err.message
    for i, r in enumerate(results):
        if i != victim:
            assert r.tokens == undisturbed[i], i


def test_a_nan_temperature_row_fails_alone(model_and_lora, undisturbed):
    """The issue's case with validation out of the way: sampling with temperature NaN raises in torch."""
    victim = 4
    results = run_together(*model_and_lora, specs(lambda i: Sampling(temperature=math.nan) if i == victim
                                                  else Sampling()))
    assert_only(results, undisturbed, victim, "FAILED_PRECONDITION")
    assert results[victim].tokens == []


@pytest.mark.parametrize("how", ["embedding", "layer"])
def test_a_row_that_makes_prefill_raise_fails_alone(model_and_lora, undisturbed, how):
    model, lora = model_and_lora
    jobs = specs()
    victim, poison = 6, 99  # only PROMPTS[6] holds 99, and no row generates it
    assert all(poison not in p for i, p in enumerate(PROMPTS) if i != victim)
    assert all(poison not in u for u in undisturbed)
    with poisoned(model, poison, how):
        results = run_together(model, lora, jobs)
    assert_only(results, undisturbed, victim, "FAILED_PRECONDITION")


def decode_victim(undisturbed) -> tuple[int, int, int]:
    """(row, step, token): a token that row generates at ``step`` >= 2 and that no prompt, no earlier step of it and
    no other row's output holds, so feeding it back is the first thing that fails."""
    for row, out in enumerate(undisturbed):
        for step in range(2, N - 1):
            token = out[step]
            elsewhere = [t for i, o in enumerate(undisturbed) if i != row for t in o]
            if token not in out[:step] and token not in elsewhere and all(token not in p for p in PROMPTS):
                return row, step, token
    raise AssertionError("no row generates a token of its own; change PROMPTS")


@pytest.mark.parametrize("how", ["embedding", "layer"])
def test_a_row_that_makes_a_decode_step_raise_fails_alone(model_and_lora, undisturbed, how):
    model, lora = model_and_lora
    victim, step, poison = decode_victim(undisturbed)
    with poisoned(model, poison, how):
        results = run_together(model, lora, specs())
    assert_only(results, undisturbed, victim, "FAILED_PRECONDITION")
    assert results[victim].tokens == undisturbed[victim][: step + 1]  # it got its tokens up to the poisoned one


def test_a_row_with_nan_logits_fails_alone(model_and_lora, undisturbed):
    model, lora = model_and_lora
    victim, poison = 6, 99
    with poisoned(model, poison, "nan"):
        results = run_together(model, lora, specs())
    assert_only(results, undisturbed, victim, "FAILED_PRECONDITION")
    assert "NaN" in results[victim].error.message


def test_the_engine_serves_on_after_failures(model_and_lora, undisturbed):
    model, lora = model_and_lora
    with poisoned(model, 99, "embedding"):
        run_together(model, lora, specs())
    assert [r.tokens for r in run_together(model, lora, specs())] == undisturbed


def test_a_scoring_row_that_raises_fails_alone(model_and_lora):
    model, lora = model_and_lora

    def score_all() -> list[list[float] | BaseException]:
        engine = Engine(model, lora, pad_id=0, device=model.device)
        out: list = [None] * len(PROMPTS)
        done = threading.Semaphore(0)

        def settle(i):
            return lambda r: (out.__setitem__(i, r), done.release())

        for i, p in enumerate(PROMPTS):
            engine.submit(ScoreJob([*p, 2, 3], 0 if i % 2 else -1, settle(i)))
        engine.start()
        try:
            for _ in PROMPTS:
                assert done.acquire(timeout=60)
        finally:
            engine.stop()
        return out

    want = score_all()
    with poisoned(model, 99, "nan"):
        nan_run = score_all()
    with poisoned(model, 99, "embedding"):
        raise_run = score_all()
    for got in (nan_run, raise_run):
        failed = [i for i, r in enumerate(got) if isinstance(r, BaseException)]
        assert failed == [6]
        assert getattr(got[6], "code", "") == "FAILED_PRECONDITION"
        assert [r for i, r in enumerate(got) if i != 6] == [r for i, r in enumerate(want) if i != 6]
