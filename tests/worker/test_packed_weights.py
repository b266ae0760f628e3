"""Base linear weights prepacked for oneDNN: F.linear's numbers, PEFT's numbers and greedy tokens through the LoRA
wrappers, and nothing served from a packed copy that no longer matches its module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapterfleet.worker.lora import AdapterWeights, LoraModel, packed
from adapterfleet.worker.lora.modules_to_save import clone_module
from adapterfleet.worker.model_host import ModelHost
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch built without oneDNN")


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(24, 40)
        self.b = nn.Linear(40, 8, bias=False)
        self.half = nn.Linear(8, 8).to(torch.bfloat16)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("shape", [(1, 24), (3, 24), (64, 24), (300, 24), (4, 1, 24), (2, 7, 24)])
def test_packed_linears_give_f_linear_numbers_in_every_shape(shape):
    torch.manual_seed(0)
    m = Two()
    x = torch.randn(shape)
    want = F.linear(F.linear(x, m.a.weight, m.a.bias), m.b.weight)
    assert packed.pack_linears(m, batch_hint=64) == 2  # the bfloat16 one is left as it is
    assert packed.of(m.a) is not None and packed.of(m.b) is not None and packed.of(m.half) is None
    with torch.inference_mode():
        got = m(x)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert packed.pack_linears(m, batch_hint=64) == 0  # packing twice packs nothing again


def test_an_input_of_another_dtype_runs_f_linear_on_the_modules_own_weight():
    torch.manual_seed(1)
    m = nn.Linear(6, 5)
    packed.pack_linears(m, batch_hint=8)
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError):  # F.linear's own error for mixed dtypes, as without packing
        m(x)
    m64 = nn.Linear(6, 5).double()
    packed.pack_linears(m64, batch_hint=8)
    assert packed.of(m64) is None
    torch.testing.assert_close(m64(x), F.linear(x, m64.weight, m64.bias))


def test_a_copy_with_its_own_weight_or_a_replaced_weight_is_not_served_from_the_stale_pack():
    torch.manual_seed(2)
    m = nn.Linear(6, 5)
    packed.pack_linears(m, batch_hint=8)
    new = torch.randn(5, 6)
    clone = clone_module(m, {"weight": new})  # a modules_to_save copy: a deep copy with the adapter's weight
    x = torch.randn(3, 6)
    assert packed.of(clone) is None
    torch.testing.assert_close(clone(x), F.linear(x, new, m.bias))
    torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias), rtol=1e-5, atol=1e-5)  # the original still packed
    m.weight = nn.Parameter(torch.randn(5, 6), requires_grad=False)  # replaced: the pack no longer describes it
    assert packed.of(m) is None
    torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias))


def test_lora_on_a_packed_model_matches_peft_and_keeps_greedy_tokens(tmp_path):
    from peft import PeftModel

    base = make_base_model("llama", tmp_path / "base", seed=0)
    adapter = make_peft_adapter(base, tmp_path / "a", seed=1, r=4, target_modules=["q_proj", "v_proj", "gate_proj"])
    host = ModelHost.load(base)  # packs by default
    assert packed.of(host.model.get_output_embeddings()) is not None
    lora = LoraModel(host.model, max_slots=2)
    lora.install(0, AdapterWeights.from_dir(adapter))
    ref = PeftModel.from_pretrained(load_base_model(base), str(adapter)).eval()
    ids = torch.randint(1, host.vocab, (3, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        with lora.rows([0, 0, 0]):
            ours = host.model(input_ids=ids).logits  # prefill rows: 36 tokens through every packed GEMM
            ours_step = host.model(input_ids=ids[:, :1]).logits  # a decode step's shape: one token per row
        with lora.rows([0, -1, 0]):
            mixed = host.model(input_ids=ids).logits
        want = ref(input_ids=ids).logits
        want_step = ref(input_ids=ids[:, :1]).logits
        with ref.disable_adapter():
            base_rows = ref(input_ids=ids[1:2]).logits
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_step, want_step, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[1:2], base_rows, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), want.argmax(-1))


def test_packing_can_be_turned_off(tmp_path):
    host = ModelHost.load(make_base_model("llama", tmp_path / "base", seed=0), packed_weights=False)
    assert all(packed.of(m) is None for m in host.model.modules())
    assert ModelHost.load(tmp_path / "base").fingerprint == host.fingerprint  # packing does not change identity


def test_a_wrapper_serves_from_its_layers_pack_only_while_the_layer_holds_that_weight(tmp_path):
    """A LoRA wrapper keeps its base layer's pack between forwards (the lookup costs microseconds a call): a weight
    replaced after forwards used the pack is served from the new weight, never the stale pack."""
    from adapterfleet.worker.lora.linear import LoraLinear

    base = make_base_model("llama", tmp_path / "base", seed=0)
    adapter = make_peft_adapter(base, tmp_path / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    host = ModelHost.load(base)
    lora = LoraModel(host.model, max_slots=2)
    lora.install(0, AdapterWeights.from_dir(adapter))
    wrapper = next(m for m in host.model.modules() if isinstance(m, LoraLinear))
    layer = wrapper.base_layer
    assert isinstance(layer, nn.Linear)
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(4))
    a, b = wrapper._stack.tensor("A")[1], wrapper._stack.tensor("B")[1]
    with torch.inference_mode():
        for slots, term in (([-1, -1, -1], False), ([0, 0, 0], True)):  # the base route and the adapter's
            with lora.rows(slots):
                got = wrapper(x)
            assert wrapper._pack is not None and wrapper._pack is packed.of(layer)
            want = F.linear(x, layer.weight, layer.bias) + ((x @ a) @ b if term else 0)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        layer.weight = nn.Parameter(layer.weight * 2, requires_grad=False)  # replaced: the pack no longer describes it
        assert packed.of(layer) is None
        for slots, term in (([-1, -1, -1], False), ([0, 0, 0], True)):
            with lora.rows(slots):
                got = wrapper(x)
            want = F.linear(x, layer.weight, layer.bias) + ((x @ a) @ b if term else 0)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
