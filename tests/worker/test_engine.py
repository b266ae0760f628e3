"""The batch engine: rows join a running batch between decode steps and get exactly their solo results."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

from adapterfleet.worker.engine import Engine, GenerateJob, ScoreJob
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.sampling import Sampling
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapter = make_peft_adapter(base, root / "a", seed=3, r=4, target_modules=["q_proj", "v_proj"])
    model = load_base_model(base)
    lora = LoraModel(model, max_slots=2)
    lora.install(0, AdapterWeights.from_dir(adapter))
    eng = Engine(model, lora, pad_id=0, device=model.device, max_batch=8)
    eng.start()
    yield eng
    eng.stop()


class Collector:
    def __init__(self):
        self.tokens: list[int] = []
        self.done = threading.Event()
        self.finished_at = 0.0

    def emit(self, toks, finished, why, logprobs=None):
        self.tokens += toks
        if finished:
            self.finished_at = time.monotonic()
            self.done.set()

    def fail(self, exc):
        raise AssertionError(exc)


def job(prompt, slot, n, out: Collector) -> GenerateJob:
    return GenerateJob(prompt, slot, n, Sampling(), frozenset(), out.emit, out.fail)


def solo(engine, prompt, slot, n) -> list[int]:
    out = Collector()
    engine.submit(job(prompt, slot, n, out))
    assert out.done.wait(60)
    return out.tokens


def test_a_request_joins_a_running_batch_and_gets_its_solo_tokens(engine):
    long_prompt, short_prompt = [5, 9, 13, 2, 7, 31, 40, 8], [3, 4]
    want_long, want_short = solo(engine, long_prompt, 0, 120), solo(engine, short_prompt, -1, 5)
    batches = engine.stats.batches
    long_out, short_out = Collector(), Collector()
    engine.submit(job(long_prompt, 0, 120, long_out))
    while len(long_out.tokens) < 3:  # the long one is decoding
        time.sleep(0.001)
    engine.submit(job(short_prompt, -1, 5, short_out))
    assert short_out.done.wait(60) and long_out.done.wait(60)
    assert short_out.finished_at < long_out.finished_at  # it did not wait for the long one to finish
    assert engine.stats.batches == batches + 1  # it joined the running batch instead of starting its own
    assert short_out.tokens == want_short and long_out.tokens == want_long


def test_scoring_runs_between_decode_steps(engine):
    long_out = Collector()
    engine.submit(job([1, 2, 3], 0, 120, long_out))
    while len(long_out.tokens) < 3:
        time.sleep(0.001)
    scored = threading.Event()
    result = []
    engine.submit(ScoreJob([1, 2, 3, 4], 0, lambda r: (result.append(r), scored.set())))
    assert scored.wait(60) and not long_out.done.is_set()
    assert len(result[0]) == 3
    assert long_out.done.wait(60)
