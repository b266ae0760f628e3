"""Chunked prefill: a long newcomer is prefilled in chunks between decode steps, with one-shot (and PEFT) results.

The newcomers are submitted from the engine's own step hook right after a given decode step, so the order of the
forwards the engine runs (its step log) is deterministic: no sleeps, no wall-clock thresholds.
"""

from __future__ import annotations

import math
import warnings
from itertools import pairwise

import pytest
import torch

from adapterfleet.worker.engine import Engine, GenerateJob, Prefill
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.sampling import Sampling
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter
from tests.helpers.outputs import Collected

LONG = [(7 * i + 3) % 120 + 1 for i in range(61)]  # 61 tokens: no chunk size below divides it but 1 and 61
OTHER = [(5 * i + 11) % 120 + 1 for i in range(23)]
RUNNING = [([5, 9, 13, 2], 0, 80), ([3, 4], -1, 80)]  # (prompt, slot, new tokens): rows decoding meanwhile
NEW = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        a = make_peft_adapter(base, root / "a", seed=3, r=4, target_modules=["q_proj", "v_proj", "o_proj"])
        b = make_peft_adapter(base, root / "b", seed=5, r=8, target_modules=["q_proj", "k_proj", "up_proj"])
    model = load_base_model(base)
    lora = LoraModel(model, max_slots=2)
    lora.install(0, AdapterWeights.from_dir(a))
    lora.install(1, AdapterWeights.from_dir(b))
    return base, {0: a, 1: b}, model, lora


def _job(prompt, slot, n, out: Collected) -> GenerateJob:
    return GenerateJob(list(prompt), slot, n, Sampling(), frozenset(), out.emit, out.fail)


def _run(model, lora, chunk: int, newcomers, *, after_decode: int = 3, running=RUNNING, fuse: bool = True,
         attention=None):
    """``running`` (RUNNING) starts on an idle engine; ``newcomers`` [(prompt, slot, n)] are submitted right after
    decode step ``after_decode``. Returns (running outputs, newcomer outputs, step log)."""
    log: list[tuple[str, int, int]] = []
    late = [(_job(p, s, n, o), o) for (p, s, n), o in zip(newcomers, [Collected() for _ in newcomers], strict=True)]

    def on_step(kind: str, rows: int, tokens: int) -> None:
        log.append((kind, rows, tokens))
        if kind == "decode" and sum(k == "decode" for k, _, _ in log) == after_decode:
            for job, _ in late:
                engine.submit(job)

    engine = Engine(model, lora, pad_id=0, device=model.device, max_batch=8, prefill_chunk_tokens=chunk,
                    on_step=on_step, fuse=fuse)
    engine.use_attention(attention)
    early = [Collected() for _ in running]
    for (p, s, n), o in zip(running, early, strict=True):
        engine.submit(_job(p, s, n, o))  # queued before the engine starts: one batch
    engine.start()
    try:
        for o in early + [o for _, o in late]:
            assert o.done.wait(120)
            assert o.error is None, o.error
    finally:
        engine.stop()
    return [o.tokens for o in early], [o.tokens for _, o in late], log


def _peft_greedy(base, adapter, prompt, n) -> list[int]:
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(load_base_model(base), adapter).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          use_cache=True, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("ragged", [False, True], ids=["left-padded", "own-caches"])
@pytest.mark.parametrize("group", [[(LONG, 0)], [(LONG, 0), (OTHER, 1)]], ids=["one", "two-lengths-two-adapters"])
def test_chunked_prefill_gives_one_shot_logits_and_cache(setup, group, ragged):
    """Chunk by chunk, as one left-padded batch or (ragged) each newcomer's own tokens into a cache of its own,
    joined once the last chunk is in: the one-shot prefill's logits, mask, positions and cache."""
    _, _, model, lora = setup
    engine = Engine(model, lora, pad_id=0, device=model.device)
    jobs = [_job(p, s, 1, Collected()) for p, s in group]
    with torch.inference_mode():
        want_logits, want_cache, want_mask, want_pos = engine._prefill(jobs)
        for step in (1, 2, 7, 16, 60, 61, 100):
            pre = engine._prefill_of(jobs, step) if ragged else Prefill(jobs, *engine._inputs(jobs), step=step)
            assert (pre.own is not None) == ragged
            chunks = 0
            while (started := engine._advance(pre, whole=False)) is None:
                chunks += 1
            assert chunks + 1 == math.ceil(len(LONG) / step)
            logits, cache, mask, pos, _ = started
            assert torch.equal(mask, want_mask) and torch.equal(pos, want_pos)
            assert (logits - want_logits).abs().max().item() <= 1e-4, step
            assert torch.equal(logits.argmax(-1), want_logits.argmax(-1))
            real = want_mask.bool()  # padded positions hold values nobody attends to
            for mine, theirs in zip(cache.layers, want_cache.layers, strict=True):
                for got, expected in ((mine.keys, theirs.keys), (mine.values, theirs.values)):  # [B, heads, T, d]
                    assert (got - expected).abs().amax(dim=(1, 3))[real].max().item() <= 1e-4


@pytest.fixture(scope="module")
def reference(setup):
    """Every request's tokens alone on an idle engine (one-shot prefill) and from PEFT."""
    base, dirs, model, lora = setup
    engine = Engine(model, lora, pad_id=0, device=model.device)
    engine.start()
    alone = {}
    try:
        for prompt, slot, n in [*RUNNING, (LONG, 0, NEW), (OTHER, 1, NEW)]:
            out = Collected()
            engine.submit(_job(prompt, slot, n, out))
            assert out.done.wait(60) and out.error is None
            alone[tuple(prompt)] = out.tokens
    finally:
        engine.stop()
    peft = {tuple(LONG): _peft_greedy(base, dirs[0], LONG, NEW), tuple(OTHER): _peft_greedy(base, dirs[1], OTHER, NEW)}
    return alone, peft


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("chunk", [1, 7, 16, 40, 0])
def test_long_newcomer_prefilled_in_chunks_between_decodes_matches_one_shot_and_peft(setup, reference, chunk, fuse):
    _, _, model, lora = setup
    alone, peft = reference
    running, (late,), log = _run(model, lora, chunk, [(LONG, 0, NEW)], fuse=fuse)
    assert late == alone[tuple(LONG)] == peft[tuple(LONG)]
    assert running == [alone[tuple(p)] for p, _, _ in RUNNING]
    # the step log: the initial prefill, 3 decodes, then one chunk with each decode until the newcomer joins. Fused,
    # a chunk rides in the next decode step's forward (logged as that decode, then the chunk); separate, it runs on
    # its own right after the decode step that its arrival followed.
    chunks = math.ceil(len(LONG) / chunk) if chunk else 1
    sizes = [min(chunk, len(LONG) - i * chunk) for i in range(chunks)] if chunk else [len(LONG)]
    want = [("prefill", 2, 2 * 4), *[("decode", 2, 2)] * 3]
    for size in sizes:
        want += [("decode", 2, 2), ("prefill", 1, size)] if fuse else [("prefill", 1, size), ("decode", 2, 2)]
    want = [*want[:-1], ("decode", 3, 3)] if not fuse else [*want, ("decode", 3, 3)]
    assert log[: len(want)] == want
    assert all(k == "decode" for k, _, _ in log[len(want):])


def test_a_decode_step_never_waits_for_more_than_one_chunk(setup, reference):
    """Two newcomers of different lengths and adapters arrive together: they are prefilled as one group, in chunks
    of at most the budget (rows x columns of the left-padded prompts), and exactly one chunk runs between two decode
    steps. A chunk computes each newcomer's own tokens only, never its left padding."""
    _, _, model, lora = setup
    alone, peft = reference
    budget = 9  # 2 rows -> 4 columns a chunk
    running, late, log = _run(model, lora, budget, [(LONG, 0, NEW), (OTHER, 1, NEW)])
    assert late == [alone[tuple(LONG)], alone[tuple(OTHER)]] == [peft[tuple(LONG)], peft[tuple(OTHER)]]
    assert running == [alone[tuple(p)] for p, _, _ in RUNNING]
    decodes = [i for i, (k, _, _) in enumerate(log) if k == "decode"]
    for before, after in pairwise(decodes):
        between = log[before + 1: after]
        assert len(between) <= 1 and all(tokens <= budget for _, _, tokens in between), log
    chunks = [entry for entry in log[decodes[0]:] if entry[0] == "prefill"]
    # 61 columns in chunks of 4 (15 x 4 + 1); the 23-token prompt's tokens fill columns 38-60: 61 + 23 tokens fed
    assert chunks == [("prefill", 2, 4)] * 9 + [("prefill", 2, 6)] + [("prefill", 2, 8)] * 5 + [("prefill", 2, 2)]


def test_newcomers_queued_during_a_chunked_prefill_start_after_it(setup, reference):
    """A generation that arrives while a chunked prefill is under way waits for it (no second prefill between two
    decode steps), then joins; everyone still gets their solo tokens."""
    _, _, model, lora = setup
    alone, _ = reference
    log: list[tuple[str, int, int]] = []
    outs = {name: Collected() for name in ("a", "b", "long", "other")}

    def on_step(kind, rows, tokens):
        log.append((kind, rows, tokens))
        if kind == "decode" and sum(k == "decode" for k, _, _ in log) == 3:
            engine.submit(_job(LONG, 0, NEW, outs["long"]))
        if kind == "prefill" and sum(k == "prefill" for k, _, _ in log) == 2:  # the long one's first chunk
            engine.submit(_job(OTHER, 1, NEW, outs["other"]))

    engine = Engine(model, lora, pad_id=0, device=model.device, max_batch=8, prefill_chunk_tokens=16,
                    on_step=on_step)
    for (p, s, n), name in zip(RUNNING, ("a", "b"), strict=True):
        engine.submit(_job(p, s, n, outs[name]))
    engine.start()
    try:
        for name in ("a", "b", "long", "other"):
            assert outs[name].done.wait(120) and outs[name].error is None
    finally:
        engine.stop()
    assert outs["long"].tokens == alone[tuple(LONG)] and outs["other"].tokens == alone[tuple(OTHER)]
    assert [outs[n].tokens for n in ("a", "b")] == [alone[tuple(p)] for p, _, _ in RUNNING]
    decodes = [i for i, (k, _, _) in enumerate(log) if k == "decode"]
    for before, after in pairwise(decodes):
        assert len(log[before + 1: after]) <= 1, log
    prefills = [entry for entry in log[1:] if entry[0] == "prefill"]
    assert prefills == [("prefill", 1, 16)] * 3 + [("prefill", 1, 13)] + [("prefill", 1, 16), ("prefill", 1, 7)]


def test_many_newcomers_against_few_running_rows_take_bigger_chunks(setup, reference):
    """Four newcomers join one running row: a chunk holds the budget per newcomer per running row (4 x 16 tokens),
    so the wave is prefilled in 4 chunks of 16 columns, not 16 chunks of 4 that would each stall the one row."""
    _, _, model, lora = setup
    alone, _ = reference
    running, late, log = _run(model, lora, 16, [(LONG, 0, NEW)] * 4, running=RUNNING[:1])
    assert late == [alone[tuple(LONG)]] * 4
    assert running == [alone[tuple(RUNNING[0][0])]]
    decodes = [i for i, (k, _, _) in enumerate(log) if k == "decode"]
    chunks = [entry for entry in log[decodes[0]:] if entry[0] == "prefill"]
    assert chunks == [("prefill", 4, 64)] * 3 + [("prefill", 4, 52)]  # 61 columns: 3 x 16 + 13


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
def test_newcomers_whose_running_rows_finish_mid_prefill_get_the_rest_in_one_go(setup, reference, fuse):
    """Two newcomers of different lengths join rows that finish two steps later: the chunks left then run as one
    forward (no row is waiting), from the newcomers' own caches (fused) or their left-padded one, with their solo
    tokens."""
    _, _, model, lora = setup
    alone, peft = reference
    short = [(p, s, 5) for p, s, _ in RUNNING]  # 3 decodes before the newcomers arrive, 2 after
    running, late, log = _run(model, lora, 9, [(LONG, 0, NEW), (OTHER, 1, NEW)], running=short, fuse=fuse)
    assert late == [alone[tuple(LONG)], alone[tuple(OTHER)]] == [peft[tuple(LONG)], peft[tuple(OTHER)]]
    assert running == [alone[tuple(p)][:5] for p, _, _ in RUNNING]
    chunks = [entry for entry in log[1:] if entry[0] == "prefill"]
    assert len(chunks) < 16 and sum(tokens for _, _, tokens in chunks) == (61 + 23 if fuse else 2 * 61), log


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("chunk", [7, 16], ids=["chunk-in-the-kernel", "chunk-a-part-of-its-own"])
def test_the_native_kernel_serves_decode_rows_and_fused_chunks_with_the_same_tokens(setup, reference, chunk, fuse,
                                                                                   native_kernel, monkeypatch):
    """Decode rows on an adapter beside a base row take the kernel; fused, so do a chunk's tokens shorter than
    ``plan.RUN_MIN`` (7), while a longer chunk (16) is a part of its own beside them."""
    if native_kernel is None:
        pytest.skip("no C++ compiler here: the native kernel cannot be built")
    _, _, model, lora = setup
    alone, peft = reference
    ran = []
    real = native_kernel.add_rows
    monkeypatch.setattr(native_kernel, "add_rows", lambda *a: ran.append(a[3].numel()) or real(*a))
    monkeypatch.setattr(lora.ctx, "low_rank", native_kernel)
    running, (late,), _ = _run(model, lora, chunk, [(LONG, 0, NEW)], fuse=fuse)
    assert late == alone[tuple(LONG)] == peft[tuple(LONG)]
    assert running == [alone[tuple(p)] for p, _, _ in RUNNING]
    assert ran, "no low-rank term went through the native kernel; the test is void"
    if fuse and chunk < 8:
        assert max(ran) >= 2 + chunk, "no fused step took the decode rows and the chunk's tokens together"


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
def test_the_native_decode_attention_serves_decode_rows_with_the_same_tokens(setup, reference, fuse, native_kernel,
                                                                            monkeypatch):
    """Rows of different lengths decoding (left-padded in one batch) while a newcomer is prefilled in chunks: with
    the native decode attention, every decode step's rows (a plain step's, and a fused step's beside the chunk) go
    through it, and the tokens are PEFT's. With fused steps off, the engine keeps the model's own attention."""
    if native_kernel is None:
        pytest.skip("no C++ compiler here: the native kernels cannot be built")
    _, _, model, lora = setup
    alone, peft = reference
    attention = native_kernel.attention
    rows = []
    real = attention.__call__
    monkeypatch.setattr(type(attention), "__call__", lambda self, q, *a: rows.append(q.shape[0]) or real(q, *a))
    running, (late,), log = _run(model, lora, 16, [(LONG, 0, NEW)], fuse=fuse, attention=attention)
    assert late == alone[tuple(LONG)] == peft[tuple(LONG)]
    assert running == [alone[tuple(p)] for p, _, _ in RUNNING]
    if not fuse:
        assert not rows, "the decode attention ran without fused steps"
        return
    layers = model.config.num_hidden_layers
    decodes = [n for kind, n, _ in log if kind == "decode"]
    assert len(rows) == layers * len(decodes), "a decode step's attention did not go through the kernel"
    assert sorted(set(rows)) == sorted(set(decodes)) and 3 in rows, "the newcomer never decoded beside the others"
