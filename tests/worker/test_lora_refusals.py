"""Adapters that do not fit the loaded base, or are broken, are refused with a typed error before any tensor
touches the model; a refused install leaves the model serving exactly what it served before."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from adapterfleet.common.errors import Incompatible, InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.worker.lora import AdapterWeights, LoraModel, wrappers
from tests.helpers.models import base_config, load_base_model

Q_PROJ = "model.layers.0.self_attn.q_proj"


def _spec_and_tensors(adapter_dir, **config_changes):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config.update(config_changes)
    return LoraSpec.from_dict(config), load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def llama(zoo):
    return zoo.base("llama")


@pytest.fixture(scope="module")
def plain(zoo):
    return zoo.adapter("llama", "plain")


def _logits(model):
    ids = torch.arange(3, 11).view(1, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_wrong_hidden_size_is_incompatible_and_names_module_and_shapes(plain):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    wider = AutoModelForCausalLM.from_config(base_config("llama", hidden_size=48), attn_implementation="eager")
    lm = LoraModel(wider.eval(), max_slots=2)
    before = _logits(wider)
    with pytest.raises(Incompatible) as err:
        lm.install(0, AdapterWeights.from_dir(plain))
    msg = str(err.value)
    assert "model.layers.0.self_attn." in msg and "[8, 32]" in msg and "in_features=48" in msg
    assert "different base model" in msg
    assert err.value.code == "FAILED_PRECONDITION"
    assert lm.installed == frozenset() and not wrappers(wider)
    assert torch.equal(_logits(wider), before)


def test_missing_module_is_incompatible(zoo, llama):
    gpt2_adapter = zoo.adapter("gpt2", "plain")  # targets transformer.h.*.attn.c_attn
    model = load_base_model(llama)
    lm = LoraModel(model, max_slots=2)
    with pytest.raises(Incompatible, match=r"transformer\.h\.0\.attn\.c_attn but the base model has no such module"):
        lm.install(0, AdapterWeights.from_dir(gpt2_adapter))
    assert not wrappers(model)


def test_module_of_unserved_kind_is_incompatible(llama, plain):
    spec, tensors = _spec_and_tensors(plain)
    # q_proj's LoRA tensors pointed at a norm layer: right name format, wrong module kind
    moved = {k.replace("self_attn.q_proj", "input_layernorm"): v for k, v in tensors.items() if "q_proj" in k}
    lm = LoraModel(load_base_model(llama), max_slots=2)
    with pytest.raises(Incompatible, match="LlamaRMSNorm; the worker serves LoRA on Linear"):
        lm.install(0, AdapterWeights.from_tensors(spec, moved))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_invalid(plain, bad):
    spec, tensors = _spec_and_tensors(plain)
    key = f"base_model.model.{Q_PROJ}.lora_B.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][3, 1] = bad
    with pytest.raises(InvalidAdapter, match=r"q_proj\.lora_B\.weight holds 1 non-finite") as err:
        AdapterWeights.from_tensors(spec, tensors)
    assert err.value.code == "INVALID_ARGUMENT"


def test_rank_that_disagrees_with_the_config_is_invalid(plain):
    spec, tensors = _spec_and_tensors(plain, r=4)
    with pytest.raises(InvalidAdapter, match=re.escape("weights have rank 8 but adapter_config.json gives rank 4")):
        AdapterWeights.from_tensors(spec, tensors)


def test_lora_a_without_lora_b_is_invalid(plain):
    spec, tensors = _spec_and_tensors(plain)
    del tensors[f"base_model.model.{Q_PROJ}.lora_B.weight"]
    with pytest.raises(InvalidAdapter, match="has lora_A but no lora_B"):
        AdapterWeights.from_tensors(spec, tensors)


def test_bias_for_a_module_without_bias_is_incompatible(llama, plain):
    spec, tensors = _spec_and_tensors(plain, bias="all")
    tensors[f"base_model.model.{Q_PROJ}.base_layer.bias"] = torch.zeros(32)
    lm = LoraModel(load_base_model(llama), max_slots=2)
    with pytest.raises(Incompatible, match=f"bias for {Q_PROJ} but the base model's Linear has none"):
        lm.install(0, AdapterWeights.from_tensors(spec, tensors))


def test_bias_with_bias_none_in_config_is_invalid(plain):
    spec, tensors = _spec_and_tensors(plain)
    tensors[f"base_model.model.{Q_PROJ}.base_layer.bias"] = torch.zeros(32)
    with pytest.raises(InvalidAdapter, match="bias='none'"):
        AdapterWeights.from_tensors(spec, tensors)


def test_embedding_base_weight_that_differs_from_the_loaded_base_is_incompatible(zoo, llama):
    emb = zoo.adapter("llama", "embedding")
    spec, tensors = _spec_and_tensors(emb)
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    assert key in tensors  # PEFT saves the (unchanged) embedding next to its LoRA
    model = load_base_model(llama)
    LoraModel(model, max_slots=1).install(0, AdapterWeights.from_tensors(spec, tensors))  # unchanged: accepted
    tensors[key] = tensors[key] + 0.01
    lm = LoraModel(load_base_model(llama), max_slots=1)
    with pytest.raises(Incompatible, match=re.escape("its own base weight for model.embed_tokens")):
        lm.install(0, AdapterWeights.from_tensors(spec, tensors))


def test_modules_to_save_tensor_of_wrong_shape_is_incompatible(zoo, llama):
    spec, tensors = _spec_and_tensors(zoo.adapter("llama", "modules_to_save"))
    tensors["base_model.model.lm_head.weight"] = torch.zeros(100, 32)
    lm = LoraModel(load_base_model(llama), max_slots=1)
    with pytest.raises(Incompatible, match=r"lm_head.weight as \[100, 32\] but the base model's is \[128, 32\]"):
        lm.install(0, AdapterWeights.from_tensors(spec, tensors))


def test_unknown_tensor_is_invalid(plain):
    spec, tensors = _spec_and_tensors(plain)
    tensors["base_model.model.model.norm.weight"] = torch.ones(32)
    with pytest.raises(InvalidAdapter, match="not under modules_to_save"):
        AdapterWeights.from_tensors(spec, tensors)


def test_occupied_slot_and_empty_slot_rows_are_refused(llama, plain):
    lm = LoraModel(load_base_model(llama), max_slots=2)
    lm.install(0, AdapterWeights.from_dir(plain))
    with pytest.raises(ValueError, match="slot 0 is occupied"):
        lm.install(0, AdapterWeights.from_dir(plain))
    with pytest.raises(ValueError, match=r"slots \[1\] hold no adapter"):
        lm.rows([0, 1])
    with pytest.raises(ValueError, match="out of range"):
        lm.install(2, AdapterWeights.from_dir(plain))
