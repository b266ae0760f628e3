"""A worker's adapters mostly share one layout: LoraModel.check walks the model once per layout key (the worker's
config and safetensors header bytes) and install trusts a fit found on its own model, but never a fit whose values
count (a saved base weight) or that another model found."""

from __future__ import annotations

import pytest

from adapterfleet.common.errors import Incompatible
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.lora import lora_model as lora_model_module
from adapterfleet.worker.lora.compat import check_compatible
from tests.helpers.models import load_base_model


@pytest.fixture
def walks(monkeypatch):
    calls: list[int] = []

    def counted(model, weights):
        calls.append(1)
        return check_compatible(model, weights)

    monkeypatch.setattr(lora_model_module, "check_compatible", counted)
    return calls


def test_one_walk_per_layout_and_install_trusts_its_own_check(zoo, walks):
    lm = LoraModel(load_base_model(zoo.base("llama")), max_slots=3)
    first, second = (AdapterWeights.from_dir(zoo.adapter("llama", "plain")) for _ in range(2))
    plan = lm.check(first, shapes=("config", "header"))
    assert lm.check(second, shapes=("config", "header")) == plan and len(walks) == 1
    lm.install(0, first)
    lm.install(1, second)
    assert len(walks) == 1  # both were checked on this model
    other = AdapterWeights.from_dir(zoo.adapter("llama", "rslora"))
    lm.check(other, shapes=("other config", "header"))  # another key: walked
    lm.install(2, AdapterWeights.from_dir(zoo.adapter("llama", "rslora")))  # never checked: walked by install
    assert len(walks) == 3


def test_a_fit_found_on_another_model_is_checked_again(zoo, walks):
    llama = LoraModel(load_base_model(zoo.base("llama")), max_slots=1)
    weights = AdapterWeights.from_dir(zoo.adapter("llama", "plain"))
    llama.check(weights, shapes=("k",))
    gpt2 = LoraModel(load_base_model(zoo.base("gpt2")), max_slots=1)
    with pytest.raises(Incompatible):
        gpt2.install(0, weights)
    with pytest.raises(Incompatible):  # the memo is per model: the same key is walked (and refused) here
        gpt2.check(weights, shapes=("k",))


def test_weights_whose_values_decide_the_fit_are_walked_every_time(zoo, walks):
    lm = LoraModel(load_base_model(zoo.base("llama")), max_slots=1)
    weights = AdapterWeights.from_dir(zoo.adapter("llama", "plain"))
    module = next(iter(weights.modules.values()))
    base = lm.model.get_submodule(module.path).weight
    module.base_weight = base.detach().clone()  # PEFT's saved copy of the base weight: its values must match
    lm.check(weights, shapes=("k",))
    module.base_weight = base.detach().clone() + 1.0  # the same shapes, other values
    with pytest.raises(Incompatible, match="differs from the loaded base"):
        lm.check(weights, shapes=("k",))
    assert len(walks) == 2


def test_a_refused_layout_is_not_remembered(zoo, walks):
    lm = LoraModel(load_base_model(zoo.base("gpt2")), max_slots=1)
    for _ in range(2):
        with pytest.raises(Incompatible):
            lm.check(AdapterWeights.from_dir(zoo.adapter("llama", "plain")), shapes=("k",))
    assert len(walks) == 2


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _spec(path):
    import json

    from adapterfleet.store.adapter_config import LoraSpec

    return LoraSpec.from_dict(json.loads((path / "adapter_config.json").read_text()))


def _same(a: AdapterWeights, b: AdapterWeights) -> None:
    assert list(a.modules) == list(b.modules) and list(a.copies) == list(b.copies)
    for path, m in a.modules.items():
        n = b.modules[path]
        assert (m.rank, m.scaling, m.embedding) == (n.rank, n.scaling, n.embedding), path
        for f in ("lora_A", "lora_B", "magnitude", "bias", "base_weight"):
            x, y = getattr(m, f), getattr(n, f)
            assert (x is None) == (y is None) and (x is None or x is y), (path, f)
    for owner, state in a.copies.items():
        assert list(state) == list(b.copies[owner]) and all(state[k] is b.copies[owner][k] for k in state)


@pytest.mark.parametrize("variant", ["plain", "pattern", "dora", "modules_to_save", "bias", "embedding"])
def test_a_layout_seen_before_is_grouped_as_the_full_path_groups_it(zoo, variant):
    d = zoo.adapter("gpt2" if variant == "bias" else "llama", variant)
    spec, tensors = _spec(d), _tensors(d)
    key = ("layout", variant)
    first = AdapterWeights.from_tensors(spec, tensors, known_finite=True, layout=key)  # full path, remembered
    _same(AdapterWeights.from_tensors(spec, tensors, known_finite=True, layout=key), first)  # replayed
    _same(AdapterWeights.from_tensors(spec, tensors), first)  # the plain full path agrees


def test_values_not_known_finite_are_checked_even_for_a_known_layout(zoo):
    from adapterfleet.common.errors import InvalidAdapter

    d = zoo.adapter("llama", "plain")
    spec, tensors = _spec(d), _tensors(d)
    AdapterWeights.from_tensors(spec, tensors, known_finite=True, layout="known")
    name = next(iter(tensors))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    with pytest.raises(InvalidAdapter, match="non-finite"):
        AdapterWeights.from_tensors(spec, tensors, layout="known")
