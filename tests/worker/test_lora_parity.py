"""The worker's batched multi-adapter LoRA gives PEFT's numbers on PEFT's own files.

Per architecture, every adapter variant (plain, rsLoRA, rank/alpha patterns, DoRA, modules_to_save, bias,
embedding LoRA; GPT-2 covers fan_in_fan_out Conv1D) is installed into its own slot, and one mixed batch runs all of
them side by side (different ranks) plus rows on no adapter. Each row must match PEFT run on that adapter alone, and
the rows PEFT can mix itself (not DoRA, not bias: PEFT loads biases into the shared base) must match PEFT's
``adapter_names`` mixed batch; greedy generation with a KV cache must match token for token.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from adapterfleet.worker.lora import AdapterWeights, LoraModel
from tests.helpers.models import ARCHITECTURES, load_base_model

TOL = 1e-4
PEFT_CANNOT_MIX = ("dora", "bias")  # DoRA: refused by adapter_names; bias: PEFT writes it into the base model
# PEFT's ModulesToSaveWrapper mixes a batch only when every adapter in it has its own copy of the module, so the
# modules_to_save adapter goes into PEFT's mixed batch with base rows only.
PEFT_ALONE_WITH_BASE = ("modules_to_save",)


# OPT flattens [batch, seq] before fc1/fc2, which PEFT's adapter_names cannot follow (the worker can: rows of one
# sequence stay together), so OPT's all-linear adapters are compared with PEFT alone.
PEFT_CANNOT_MIX_ON = {"opt": ("rslora", "pattern")}


def _cannot_mix(arch: str) -> tuple[str, ...]:
    return PEFT_CANNOT_MIX + PEFT_CANNOT_MIX_ON.get(arch, ())


def _peft_groups(arch: str, variants: list[str]) -> list[list[str]]:
    mixable = [v for v in variants if v not in _cannot_mix(arch) and v not in PEFT_ALONE_WITH_BASE]
    return [mixable, *([v] for v in variants if v in PEFT_ALONE_WITH_BASE)]


def _peft(base_path, adapters: dict[str, object]):
    from peft import PeftModel

    names = list(adapters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(load_base_model(base_path), adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            pm.load_adapter(adapters[name], adapter_name=name)
    return pm.eval()


@torch.no_grad()
def _logprobs(model, ids, mask, **kwargs) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    return torch.log_softmax(logits.float(), dim=-1)  # [batch, seq, vocab]


@torch.no_grad()
def _greedy(model, ids, mask, **kwargs) -> torch.Tensor:
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0,
        **kwargs,
    )
    return out[:, ids.shape[1]:]


class Case:
    """One architecture: its adapters in slots 0..n-1 of one LoraModel, and a left-padded batch."""

    def __init__(self, zoo, arch: str):
        self.arch = arch
        self.base = zoo.base(arch)
        self.variants = zoo.variants(arch)
        self.dirs = {v: zoo.adapter(arch, v) for v in self.variants}
        self.model = load_base_model(self.base)
        self.lora = LoraModel(self.model, max_slots=len(self.variants) + 2)
        for slot, v in enumerate(self.variants):
            self.lora.install(slot, AdapterWeights.from_dir(self.dirs[v]))
        # each adapter once, two rows on no adapter, and the first adapter again at the end
        self.row_variants = [*self.variants, None, None, self.variants[0]]
        self.slots = [-1 if v is None else self.variants.index(v) for v in self.row_variants]
        gen = torch.Generator().manual_seed(7)
        vocab = self.model.config.vocab_size
        self.ids = torch.randint(3, vocab, (len(self.slots), 9), generator=gen)
        self.mask = torch.ones_like(self.ids)
        for row, pad in ((1, 3), (len(self.slots) - 2, 2)):  # ragged prompts, left padded
            self.ids[row, :pad] = 0
            self.mask[row, :pad] = 0


@pytest.fixture(scope="module", params=ARCHITECTURES)
def case(request, zoo) -> Case:
    return Case(zoo, request.param)


def test_each_row_matches_peft_on_its_adapter_alone(case):
    with case.lora.rows(case.slots):
        got = _logprobs(case.model, case.ids, case.mask)
    base = _logprobs(load_base_model(case.base), case.ids, case.mask)
    for variant in case.variants:
        want = _logprobs(_peft(case.base, {variant: case.dirs[variant]}), case.ids, case.mask)
        rows = [i for i, v in enumerate(case.row_variants) if v == variant]
        keep = case.mask[rows].bool()
        diff = (got[rows] - want[rows])[keep].abs().max().item()
        assert diff <= TOL, f"{case.arch}/{variant}: max |logp - peft| = {diff:.2e}"
        effect = (want[rows] - base[rows])[keep].abs().max().item()
        assert effect > 1e-2, f"{case.arch}/{variant}: the adapter does not change the output; the test is void"
    rows = [i for i, v in enumerate(case.row_variants) if v is None]
    keep = case.mask[rows].bool()
    assert (got[rows] - base[rows])[keep].abs().max().item() <= TOL


def test_mixed_batch_matches_peft_adapter_names(case):
    for group in _peft_groups(case.arch, case.variants):
        rows = [i for i, v in enumerate(case.row_variants) if v is None or v in group]
        pm = _peft(case.base, {v: case.dirs[v] for v in group})
        names = [case.row_variants[i] or "__base__" for i in rows]
        want = _logprobs(pm, case.ids[rows], case.mask[rows], adapter_names=names)
        with case.lora.rows([case.slots[i] for i in rows]):
            got = _logprobs(case.model, case.ids[rows], case.mask[rows])
        keep = case.mask[rows].bool()
        assert (got - want)[keep].abs().max().item() <= TOL, f"{case.arch}: {group}"


def test_greedy_generation_with_kv_cache_matches_peft(case):
    with case.lora.rows(case.slots):
        got = _greedy(case.model, case.ids, case.mask)
    base = _greedy(load_base_model(case.base), case.ids, case.mask)
    nones = [i for i, v in enumerate(case.row_variants) if v is None]
    assert torch.equal(got[nones], base[nones])
    assert not torch.equal(got, base), "no adapter changes a single greedy token; the test is void"
    for group in _peft_groups(case.arch, case.variants):
        rows = [i for i, v in enumerate(case.row_variants) if v is None or v in group]
        pm = _peft(case.base, {v: case.dirs[v] for v in group})
        names = [case.row_variants[i] or "__base__" for i in rows]
        want = _greedy(pm, case.ids[rows], case.mask[rows], adapter_names=names)
        assert torch.equal(got[rows], want), f"{case.arch}: {group}"
    for variant in _cannot_mix(case.arch):
        if variant not in case.variants:
            continue
        row = case.row_variants.index(variant)
        alone = _greedy(_peft(case.base, {variant: case.dirs[variant]}), case.ids[[row]], case.mask[[row]])
        assert torch.equal(got[[row]], alone), f"{case.arch}/{variant}"
