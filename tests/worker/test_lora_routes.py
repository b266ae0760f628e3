"""Every route a LoRA linear takes to add its term gives PEFT's numbers.

``LoraLinear`` picks a route per forward: one adapter for the whole batch (plain matmuls on that slot's tensors), the
native kernel where it is loaded (rows of any length), else rows of at most ``BAG_TOKENS`` tokens (as in decode: ``bmm``
over views of the stacks laid out by stack row where ``RowPlan.grouped`` allows, else ``embedding_bag`` gathers) or
longer rows (``bmm`` on gathered rows, as in prefill); and either runs the base GEMM itself (plain Linear / Conv1D) or
calls the base module as it is (DoRA, other module types). Each is checked against PEFT run on one adapter alone, with
DoRA scales, adapter biases (GPT-2's Conv1D and LayerNorms), rank padding (rank_pattern) and rows on the base model.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import adapterfleet.worker.lora.linear as lora_linear
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.lora import plan as row_plan
from adapterfleet.worker.lora.linear import BAG_TOKENS
from tests.helpers.models import load_base_model

TOL = 1e-4
ADAPTERS = {"llama": ("pattern", "dora"), "gpt2": ("bias", "rslora")}  # (X, Y) per architecture
ROW_SETS = {  # rows as adapter names; None = base model
    "one adapter": ("X", "X", "X"),
    "the other adapter": ("Y", "Y"),
    "adapter and base": ("X", None, "X"),
    "two adapters": ("X", "Y", None),
}
TOKENS = (1, BAG_TOKENS, BAG_TOKENS + 5)
# rows of at most BAG_TOKENS tokens take one of three routes; longer rows bmm or the native kernel
FEW_TOKEN_ROUTES = ("grouped", "embedding_bag", "native kernel")
ROUTES = [(t, few) for t in TOKENS for few in (FEW_TOKEN_ROUTES if t <= BAG_TOKENS else ("bmm", "native kernel"))]


def _peft(base, adapter_dir):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(load_base_model(base), adapter_dir).eval()


class Setup:
    def __init__(self, zoo, arch: str):
        self.base = zoo.base(arch)
        x, y = ADAPTERS[arch]
        self.dirs = {"X": zoo.adapter(arch, x), "Y": zoo.adapter(arch, y)}
        self.model = load_base_model(self.base)
        self.lora = LoraModel(self.model, max_slots=4)
        self.slot = {"X": 2, "Y": 0}  # install order differs from slot order on purpose
        for name in ("X", "Y"):
            self.lora.install(self.slot[name], AdapterWeights.from_dir(self.dirs[name]))
        self.want = {name: _peft(self.base, d) for name, d in self.dirs.items()}
        self.want[None] = load_base_model(self.base)


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def setup(request, zoo) -> Setup:
    return Setup(zoo, request.param)


@pytest.mark.parametrize("base_gemm", ("ours", "base module's"))
@pytest.mark.parametrize(("tokens", "route"), ROUTES)
@pytest.mark.parametrize("row_set", sorted(ROW_SETS))
def test_route_matches_peft_per_row(setup, row_set, tokens, route, base_gemm, native_kernel, monkeypatch):
    ran = []
    if route == "embedding_bag":
        monkeypatch.setattr(row_plan, "HOLE_LIMIT", -1.0)  # no grouping
    if route == "native kernel":
        if native_kernel is None:
            pytest.skip("no C++ compiler here: the native kernel cannot be built")
        real = native_kernel.add_rows
        monkeypatch.setattr(native_kernel, "add_rows", lambda *a: ran.append(1) or real(*a))
        monkeypatch.setattr(setup.lora.ctx, "low_rank", native_kernel)
    if base_gemm != "ours":  # as for a Linear subclass (quantised layers): the base module runs its own forward
        monkeypatch.setattr(lora_linear, "_PLAIN", ())
    names = ROW_SETS[row_set]
    gen = torch.Generator().manual_seed(tokens)
    ids = torch.randint(3, setup.model.config.vocab_size, (len(names), tokens), generator=gen)  # [rows, tokens]
    with torch.no_grad():
        with setup.lora.rows([-1 if n is None else setup.slot[n] for n in names]):
            got = setup.model(input_ids=ids).logits
        for row, name in enumerate(names):
            want = setup.want[name](input_ids=ids[row : row + 1]).logits
            diff = (got[row : row + 1] - want).abs().max().item()
            assert diff <= TOL, f"{row_set}, {tokens} tokens, row {row} ({name}): max |logits - peft| = {diff:.2e}"
            if name is not None:
                effect = (want - setup.want[None](input_ids=ids[row : row + 1]).logits).abs().max().item()
                assert effect > 1e-3, f"adapter {name} does not change the logits; the test is void"
    if route == "native kernel" and any(n is not None for n in names) and len(set(names)) > 1:
        assert ran, "no low-rank term went through the native kernel; the test is void"


@pytest.mark.parametrize("tokens", (1, BAG_TOKENS + 5))
def test_bfloat16_routes_stay_close_to_float32_peft(zoo, tokens):
    base = zoo.base("llama")
    dirs = [zoo.adapter("llama", "pattern"), zoo.adapter("llama", "dora")]
    model = load_base_model(base, dtype=torch.bfloat16)
    lm = LoraModel(model, max_slots=2)
    for slot, d in enumerate(dirs):
        lm.install(slot, AdapterWeights.from_dir(d))
    ids = torch.arange(5, 5 + 3 * tokens).view(3, tokens)
    with torch.no_grad(), lm.rows([1, 0, 1]):
        got = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    with torch.no_grad():
        for row, slot in enumerate([1, 0, 1]):
            want = torch.log_softmax(_peft(base, dirs[slot])(input_ids=ids[row : row + 1]).logits, dim=-1)
            assert (got[row : row + 1] - want).abs().max().item() <= 2e-2
