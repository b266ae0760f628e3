"""Slots: install / remove / reuse, rows per forward, incremental wrapping, and that unloading frees memory."""

from __future__ import annotations

import gc
import threading
import warnings

import pytest
import torch

from adapterfleet.worker.lora import AdapterWeights, LoraModel, wrappers
from adapterfleet.worker.lora.slot_stack import Field, SlotStack
from tests.helpers.models import load_base_model

IDS = torch.arange(5, 29).view(3, 8)  # [batch, seq]


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _peft_logits(base, adapter_dir, ids=IDS):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(load_base_model(base), adapter_dir).eval()
    return _logits(pm, ids)


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process that Python can reach."""
    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        # a served model's prepacked oneDNN weights (lora/packed.py) have no storage Python can read; not adapters'
        if issubclass(type(obj), torch.Tensor) and obj.device.type != "meta" and not obj.is_mkldnn:
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


@pytest.fixture(scope="module")
def llama(zoo):
    return zoo.base("llama")


def test_no_rows_set_means_base_model(zoo, llama):
    model = load_base_model(llama)
    base = _logits(model)
    lm = LoraModel(model, max_slots=2)
    lm.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "plain")))
    assert torch.equal(_logits(model), base)
    with lm.rows([-1, -1, -1]):
        assert torch.equal(_logits(model), base)
    with lm.rows([0, -1, 0]):
        assert not torch.allclose(_logits(model)[0], base[0])


def test_rows_must_match_the_batch(zoo, llama):
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=2)
    lm.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "plain")))
    with lm.rows([0, -1]), pytest.raises(ValueError, match="saw 3 rows but 2 row slots are set"):
        _logits(model)


def test_wrapping_grows_with_new_adapters(zoo, llama):
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=4)
    lm.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "plain")))  # q_proj, v_proj
    assert len(wrappers(model)) == 4
    lm.install(1, AdapterWeights.from_dir(zoo.adapter("llama", "rslora")))  # all linear layers
    assert len(wrappers(model)) == 14
    lm.install(2, AdapterWeights.from_dir(zoo.adapter("llama", "modules_to_save")))  # + lm_head switch
    assert len(wrappers(model)) == 15
    assert "lm_head" in lm.slot_modules(2) and "lm_head" not in lm.slot_modules(1)
    with lm.rows([1, 0, 2]):
        got = _logits(model)
    for row, variant in enumerate(["rslora", "plain", "modules_to_save"]):
        want = _peft_logits(llama, zoo.adapter("llama", variant))
        assert (got[row] - want[row]).abs().max() <= 1e-4, variant


def test_remove_keeps_other_slots_and_slot_reuse_serves_the_new_adapter(zoo, llama):
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=3)
    for slot, variant in enumerate(["plain", "pattern", "dora"]):
        lm.install(slot, AdapterWeights.from_dir(zoo.adapter("llama", variant)))
    with lm.rows([0, 1, 2]):
        before = _logits(model)
    lm.remove(0)  # the largest rank goes: q_proj / v_proj stacks shrink to rank 6 / 4
    with pytest.raises(ValueError, match="hold no adapter"):
        lm.rows([0, 1, 2])
    with lm.rows([-1, 1, 2]):
        after = _logits(model)
    assert (after[1:] - before[1:]).abs().max() <= 1e-5
    lm.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "embedding")))
    with lm.rows([0, 1, 2]):
        got = _logits(model)
    want = _peft_logits(llama, zoo.adapter("llama", "embedding"))
    assert (got[0] - want[0]).abs().max() <= 1e-4


@pytest.mark.parametrize("whole_first", [True, False], ids=["whole-then-lora", "lora-then-whole"])
def test_module_saved_whole_by_one_adapter_and_changed_by_lora_in_another(zoo, llama, whole_first):
    """Adapter W saves each layer's mlp whole; adapter L puts LoRA inside those mlps (and on lm_head)."""
    whole = zoo.custom("llama", "mlp_whole", seed=11, r=2, target_modules=["q_proj"], modules_to_save=["mlp"])
    lora = zoo.custom("llama", "mlp_lora", seed=12, r=4, target_modules=["gate_proj", "down_proj", "lm_head"])
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=2)
    order = [(0, whole), (1, lora)] if whole_first else [(1, lora), (0, whole)]
    for slot, d in order:
        lm.install(slot, AdapterWeights.from_dir(d))
    with lm.rows([0, 1, -1]):
        got = _logits(model)
    for row, d in ((0, whole), (1, lora)):
        want = _peft_logits(llama, d)
        assert (got[row] - want[row]).abs().max() <= 1e-4
    assert (got[2] - _logits(load_base_model(llama))[2]).abs().max() <= 1e-5
    lm.remove(0)
    lm.remove(1)
    assert lm.nbytes() == 0


def test_beam_search_expands_rows(zoo, llama):
    """generate() repeats each row for beams; every copy keeps its row's adapter."""
    from peft import PeftModel

    adapter = zoo.adapter("llama", "rslora")
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=1)
    lm.install(0, AdapterWeights.from_dir(adapter))
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
    with torch.no_grad(), lm.rows([0, -1]):
        got = model.generate(input_ids=IDS[:2], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(load_base_model(llama), adapter).eval()
    with torch.no_grad():
        want_adapter = pm.generate(input_ids=IDS[:1], **kwargs)
        want_base = load_base_model(llama).generate(input_ids=IDS[1:2], **kwargs)
    assert torch.equal(got[:2], want_adapter) and torch.equal(got[2:], want_base)


def test_rows_are_per_thread(zoo, llama):
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=1)
    lm.install(0, AdapterWeights.from_dir(zoo.adapter("llama", "plain")))
    seen = {}
    with lm.rows([0, 0, 0]):
        t = threading.Thread(target=lambda: seen.setdefault("other", lm.ctx.current()))
        t.start()
        t.join()
        assert lm.ctx.current().slots == (0, 0, 0)
    assert seen["other"] is None and lm.ctx.current() is None


def test_unload_frees_memory(zoo, llama):
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=4)
    variants = ["plain", "rslora", "dora", "modules_to_save", "embedding"]
    dirs = [zoo.adapter("llama", v) for v in variants]
    lm.install(0, AdapterWeights.from_dir(dirs[0]))  # wrappers exist from here on; measure from an empty model
    lm.remove(0)
    baseline = _live_tensor_bytes()
    for _ in range(3):
        for slot, d in enumerate(dirs[:4]):
            lm.install(slot, AdapterWeights.from_dir(d))
        lm.remove(1)
        lm.install(1, AdapterWeights.from_dir(dirs[4]))
        with lm.rows([0, 1, 3]):
            _logits(model)
        assert lm.nbytes() > 0 and _live_tensor_bytes() > baseline
        for slot in range(4):
            lm.remove(slot)
        assert lm.nbytes() == 0
        assert _live_tensor_bytes() == baseline
    if torch.cuda.is_available():  # pragma: no cover - only on a GPU machine
        model.cuda()
        lm = LoraModel(model, max_slots=2)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(3):
            lm.install(0, AdapterWeights.from_dir(dirs[2]))
            lm.remove(0)
        assert torch.cuda.memory_allocated() == before


def test_slot_stack_pads_to_the_largest_rank_and_shrinks_back():
    fields = {"A": Field(0.0, rank_dim=0), "scale": Field(1.0)}
    stack = SlotStack(fields, max_slots=8, device=torch.device("cpu"))
    stack = stack.added(5, {"A": torch.ones(2, 3), "scale": None}, rank=2)
    stack = stack.added(1, {"A": torch.full((8, 3), 2.0), "scale": torch.full((3,), 3.0)}, rank=8)
    assert stack["A"].shape == (3, 8, 3) and stack.rank == 8
    assert stack.slot_map.tolist() == [0, 0, 2, 0, 0, 0, 1, 0, 0]  # index = slot + 1
    assert stack["A"][1, 2:].abs().sum() == 0  # rank-2 adapter zero-padded
    assert stack["scale"][:, 0].tolist() == [1.0, 1.0, 3.0]  # rows without a scale get the neutral 1
    stack = stack.removed(1)
    assert stack["A"].shape == (2, 2, 3) and stack["scale"] is None
    assert stack.slot_map.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0]
    stack = stack.removed(5)
    assert stack.nbytes() == 0 and stack.slot_map is None


def test_bfloat16_base_serves_float32_adapter_files(zoo, llama):
    """Adapter tensors (and PEFT's fp32 copy of the embedding) are cast to the base's dtype; close to fp32 PEFT."""
    adapter = zoo.adapter("llama", "dora")  # DoRA on attention + embedding, with embed_tokens.base_layer.weight
    model = load_base_model(llama, dtype=torch.bfloat16)
    lm = LoraModel(model, max_slots=1)
    lm.install(0, AdapterWeights.from_dir(adapter))
    with lm.rows([0, -1, 0]):
        got = torch.log_softmax(_logits(model).float(), dim=-1)
    want = torch.log_softmax(_peft_logits(llama, adapter), dim=-1)
    assert (got[[0, 2]] - want[[0, 2]]).abs().max() <= 2e-2
