"""Fused steps (``adapterfleet.worker.ragged``): a decode step and a prefill chunk as one forward give the logits and
KV caches of the two separate forwards, on every supported architecture and attention implementation, with adapters
of every wrapper kind (LoRA, DoRA, embedding LoRA, a bias, a module copy) mixed per token; the engine falls back to
separate forwards when a fused one raises, and unsupported models say why."""

from __future__ import annotations

import warnings

import pytest
import torch

from adapterfleet.worker import ragged
from adapterfleet.worker.engine import Engine, GenerateJob
from adapterfleet.worker.kvcache import new_cache
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.sampling import Sampling
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter
from tests.helpers.outputs import Collected

ADAPTERS = {  # slot -> LoraConfig kwargs: one per wrapper kind the fused step must cut per token
    0: dict(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    1: dict(r=8, target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=True),
    2: dict(r=4, target_modules=["o_proj", "down_proj"], modules_to_save=["lm_head"]),
}
TOL = 1e-4
SPECS = [([5, 9, 13, 2], 0, 12), ([3, 4], -1, 12), ([21, 4, 17, 5, 60, 2, 33], 1, 6), ([40, 3, 12], 2, 6)]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2"])
def arch(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"ragged-{request.param}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model(request.param, root / "base", seed=0)
        dirs = {slot: make_peft_adapter(base, root / f"a{slot}", seed=10 + slot, **kw) for slot, kw in ADAPTERS.items()}
    return base, dirs


def _model(arch, attention: str):
    base, dirs = arch
    model = load_base_model(base)
    model.config._attn_implementation = attention
    lora = LoraModel(model, max_slots=len(dirs))
    for slot, d in dirs.items():
        lora.install(slot, AdapterWeights.from_dir(d))
    return model, lora


def _batch(engine: Engine, prompts: list[list[int]]):
    jobs = [GenerateJob(p, -1, 1, Sampling(), frozenset(), lambda *a: None, lambda e: None) for p in prompts]
    return engine._inputs(jobs)  # left-padded ids, mask, positions


def _forward(model, lora, slots, ids, mask, pos, cache):
    with lora.rows(slots):
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                     logits_to_keep=1).logits[:, -1].float()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("split", [0, 5], ids=["first-chunk", "later-chunk"])
def test_a_fused_step_equals_the_decode_step_and_the_chunk_run_apart(arch, attention, split):
    model, lora = _model(arch, attention)
    engine = Engine(model, lora, pad_id=0, device=model.device)
    running, slots = [[5, 9, 13, 2], [3, 4], [7, 1, 8, 30, 2, 9, 11]], [0, -1, 2]
    newcomers, new_slots = [[21, 4, 17, 5, 60, 2, 33, 8, 19, 4, 6], [40, 3, 12]], [1, 2]
    ids, mask, pos = _batch(engine, running)
    nids, nmask, npos = _batch(engine, newcomers)
    step = torch.tensor([[11], [12], [13]])
    step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    step_pos = pos[:, -1:] + 1
    width = nids.shape[1]
    with torch.inference_mode():
        caches = []
        for _ in range(2):  # the running batch's cache, and a newcomer cache holding its first ``split`` columns
            cache, pre = new_cache(), new_cache()
            _forward(model, lora, slots, ids, mask, pos, cache)
            if split:
                _forward(model, lora, new_slots, nids[:, :split], nmask[:, :split], npos[:, :split], pre)
            caches.append((cache, pre))
        (want_cache, want_pre), (got_cache, got_pre) = caches
        want = _forward(model, lora, slots, step, step_mask, step_pos, want_cache)
        want_new = _forward(model, lora, new_slots, nids[:, split:], nmask, npos[:, split:], want_pre)
        assert ragged.unsupported(model, [got_cache], width) is None
        got, got_new = ragged.forward(model, lora, [
            ragged.Segment(got_cache, step, step_pos, step_mask, slots, keep=True),
            ragged.Segment(got_pre, nids[:, split:], npos[:, split:], nmask, new_slots, keep=True),
        ])
    assert model.config._attn_implementation == attention  # put back after the call
    assert (got - want).abs().max().item() <= TOL
    assert (got_new - want_new).abs().max().item() <= TOL
    for got_c, want_c, m in ((got_cache, want_cache, step_mask), (got_pre, want_pre, nmask)):
        real = m.bool()  # padded positions hold values nobody attends to
        for mine, theirs in zip(got_c.layers, want_c.layers, strict=True):
            for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values)):  # [B, heads, T, d]
                assert a.shape == b.shape
                assert (a - b).abs().amax(dim=(1, 3))[real].max().item() <= TOL


def test_a_chunk_that_is_not_the_last_keeps_no_logits(arch):
    model, lora = _model(arch, "sdpa")
    engine = Engine(model, lora, pad_id=0, device=model.device)
    ids, mask, pos = _batch(engine, [[5, 9, 13, 2]])
    nids, nmask, npos = _batch(engine, [[21, 4, 17, 5, 60, 2, 33, 8]])
    with torch.inference_mode():
        cache, pre = new_cache(), new_cache()
        _forward(model, lora, [0], ids, mask, pos, cache)
        out = ragged.forward(model, lora, [
            ragged.Segment(cache, torch.tensor([[3]]), pos[:, -1:] + 1, torch.ones(1, 5, dtype=torch.long), [0], True),
            ragged.Segment(pre, nids[:, :4], npos[:, :4], nmask[:, :4], [1], keep=False),
        ])
    assert out[0] is not None and out[0].shape == (1, model.config.vocab_size) and out[1] is None
    assert pre.layers[0].keys.shape[-2] == 4 and cache.layers[0].keys.shape[-2] == 5


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_models_without_the_llama_attention_pattern_are_not_fused(kind, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_base_model(make_base_model(kind, tmp_path / "base", seed=0))
    reason = ragged.unsupported(model, [], 8)
    assert reason is not None and kind in reason


def test_a_context_longer_than_the_sliding_window_is_not_fused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_base_model(make_base_model("mistral", tmp_path / "base", seed=0, sliding_window=16))
    assert ragged.unsupported(model, [], 16) is None
    assert "sliding window" in ragged.unsupported(model, [], 17)


def test_the_ragged_attention_refuses_to_run_outside_a_fused_forward(arch):
    model, _ = _model(arch, "sdpa")
    model.config._attn_implementation = ragged.NAME
    try:
        with pytest.raises(RuntimeError, match="only inside"), torch.inference_mode():
            model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        model.config._attn_implementation = "sdpa"


def _generate(model, lora, monkeypatch, *, fail_fused: bool):
    """Two rows decoding, two newcomers submitted after the 2nd decode step; every fused forward raises after
    it ran (its caches appended to) when ``fail_fused``. Returns (tokens per request, step log, fused calls)."""
    calls = []
    real = ragged.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if fail_fused:
            raise RuntimeError("injected after the forward ran")
        return out

    monkeypatch.setattr(ragged, "forward", forward)
    log: list[tuple[str, int, int]] = []
    outs = [Collected() for _ in range(4)]
    jobs = [GenerateJob(p, s, n, Sampling(), frozenset(), o.emit, o.fail) for (p, s, n), o in zip(SPECS, outs,
                                                                                                  strict=True)]

    def on_step(kind, rows, tokens):
        log.append((kind, rows, tokens))
        if kind == "decode" and sum(k == "decode" for k, _, _ in log) == 2:
            engine.submit(jobs[2])
            engine.submit(jobs[3])

    engine = Engine(model, lora, pad_id=0, device=model.device, max_batch=8, on_step=on_step)
    engine.submit(jobs[0])
    engine.submit(jobs[1])
    engine.start()
    try:
        for o in outs:
            assert o.done.wait(60) and o.error is None, o.error
    finally:
        engine.stop()
    return [o.tokens for o in outs], log, len(calls)


def test_the_engine_fuses_newcomers_into_a_decode_step_and_falls_back_when_that_raises(arch, monkeypatch):
    model, lora = _model(arch, "sdpa")
    fused, log, calls = _generate(model, lora, monkeypatch, fail_fused=False)
    # both newcomers in one chunk (their own 7 + 3 tokens, no padding), inside one decode step
    assert calls == 1 and ("prefill", 2, 10) in log
    assert log.index(("prefill", 2, 10)) == log.index(("decode", 2, 2), 3) + 1
    fallback, log, calls = _generate(model, lora, monkeypatch, fail_fused=True)
    assert calls == 1  # tried once; the newcomers then ran as a forward of their own
    assert fallback == fused
    engine = Engine(model, lora, pad_id=0, device=model.device, fuse=False)
    engine.start()
    try:
        for (prompt, slot, n), tokens in zip(SPECS, fused, strict=True):
            out = Collected()
            engine.submit(GenerateJob(prompt, slot, n, Sampling(), frozenset(), out.emit, out.fail))
            assert out.done.wait(60) and out.error is None
            assert out.tokens == tokens  # each alone on an idle engine
    finally:
        engine.stop()
