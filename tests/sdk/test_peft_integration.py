"""from_store / load_adapter_from_store / push_from_peft against a real store and PEFT's own loaders, and the
preflight errors for the classic loading problems (wrong base, missing files, meta device)."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from adapterfleet.common.errors import FailedPrecondition, Incompatible, InvalidAdapter, InvalidArgument
from adapterfleet.sdk.peft import from_store, load_adapter_from_store, push_from_peft
from adapterfleet.sdk.preflight import load_device, preflight
from adapterfleet.sdk.store import AdapterStore
from tests.helpers.models import (
    ADAPTER_VARIANTS,
    base_config,
    load_base_model,
    make_base_model,
    make_peft_adapter,
    variant_config,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers API
IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 7]])
TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn", "c_proj"]}
FIRST_MODULE = {"llama": "model.layers.0.self_attn.q_proj", "gpt2": "transformer.h.0.attn.c_attn"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("sdk_peft")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in ("llama", "gpt2"):
            base = make_base_model(arch, root / arch / "base", seed=0)
            out[arch] = {
                "base": base,
                "wrong_base": make_base_model(arch, root / arch / "wide", seed=0, hidden_size=48),
                "a": make_peft_adapter(base, root / arch / "a", seed=1, r=8, target_modules=TARGETS[arch]),
                "b": make_peft_adapter(base, root / arch / "b", seed=2, r=4, lora_alpha=8,
                                       target_modules=TARGETS[arch][:1]),
            }
    return out


@pytest.fixture
def sdk(store, tmp_path):
    with AdapterStore(store.address, timeout=60, cache_dir=tmp_path / "cache") as s:
        yield s


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS.to(next(model.parameters()).device)).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_from_store_equals_peft_from_pretrained(sdk, zoo, arch):
    from peft import PeftModel

    z = zoo[arch]
    key = str(sdk.push(z["a"], f"acme/{arch}", alias="prod").manifest.key)
    model = from_store(load_base_model(z["base"]), f"acme/{arch}@prod", store=sdk)
    reference = PeftModel.from_pretrained(load_base_model(z["base"]), str(sdk.pull(key)))
    assert torch.equal(logits(model), logits(reference))
    assert not torch.equal(logits(model), logits(load_base_model(z["base"])))  # the adapter is really there
    assert model.adapterfleet_sources == {"default": key}
    assert not any(p.requires_grad for p in model.parameters())


def test_from_store_takes_a_store_address(store, zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the default cache lives under ~/.cache
    z = zoo["llama"]
    key = str(AdapterStore(store.address).push(z["a"], "acme/by-address").manifest.key)
    model = from_store(load_base_model(z["base"]), "acme/by-address", store=store.address)
    assert model.adapterfleet_sources["default"] == key
    assert any((tmp_path / ".cache/adapterfleet/adapters/sha256").iterdir())


def test_load_adapter_from_store_equals_peft_load_adapter(sdk, zoo):
    from peft import PeftModel

    z = zoo["llama"]
    key_a = str(sdk.push(z["a"], "acme/a").manifest.key)
    key_b = str(sdk.push(z["b"], "acme/b", alias="prod").manifest.key)
    model = from_store(load_base_model(z["base"]), "acme/a", store=sdk)
    result = load_adapter_from_store(model, "acme/b@prod", "second", store=sdk)
    assert not result.unexpected_keys
    model.set_adapter("second")
    reference = PeftModel.from_pretrained(load_base_model(z["base"]), str(sdk.pull(key_a)))
    reference.load_adapter(str(sdk.pull(key_b)), adapter_name="second")
    reference.set_adapter("second")
    assert torch.equal(logits(model), logits(reference))
    assert model.adapterfleet_sources == {"default": key_a, "second": key_b}
    model.set_adapter("default")
    assert not torch.equal(logits(model), logits(reference))


def _train(model, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _pulled_state(sdk, key: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(sdk.pull(key) / "adapter_model.safetensors"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_continued_training_round_trip(sdk, zoo, arch):
    from peft import get_peft_model_state_dict

    z = zoo[arch]
    source = str(sdk.push(z["a"], "acme/t", alias="prod").manifest.key)
    model = from_store(load_base_model(z["base"]), "acme/t@prod", is_trainable=True, store=sdk)
    before = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    _train(model)
    trained = get_peft_model_state_dict(model)
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the weights moved
    outcome = push_from_peft(model, "acme/t", store=sdk)
    assert outcome.created and outcome.manifest.version == 2 and outcome.manifest.parent == source
    assert sdk.resolve("acme/t@2").manifest.parent == source
    assert model.adapterfleet_sources["default"] == str(outcome.manifest.key)
    pulled = _pulled_state(sdk, str(outcome.manifest.key))
    assert pulled.keys() == trained.keys() and all(torch.equal(pulled[k], trained[k]) for k in trained)
    assert sorted(f.name for f in outcome.manifest.files) == ["adapter_config.json", "adapter_model.safetensors"]
    again = push_from_peft(model, "acme/t", store=sdk)  # same weights: the same version, parent unchanged
    assert not again.created and again.manifest.version == 2


def test_pushed_config_is_the_same_bytes_whatever_order_peft_wrote_target_modules_in(sdk, zoo, monkeypatch):
    """PEFT keeps target_modules in a set (its order follows the process's hash seed): a re-push of the same
    weights from another process must still be recognised as the same version."""
    z = zoo["llama"]
    model = from_store(load_base_model(z["base"]), str(sdk.push(z["b"], "acme/order").manifest.key), store=sdk)
    first = push_from_peft(model, "acme/order-copy", store=sdk)
    save = type(model).save_pretrained

    def save_with_reversed_modules(self, directory, **kw):  # what another hash seed may write
        save(self, directory, **kw)
        config = Path(directory) / "adapter_config.json"
        body = json.loads(config.read_text())
        body["target_modules"] = sorted(body["target_modules"], reverse=True)
        config.write_text(json.dumps(body))

    monkeypatch.setattr(type(model), "save_pretrained", save_with_reversed_modules)
    again = push_from_peft(model, "acme/order-copy", store=sdk, parent=first.manifest.parent)
    assert not again.created and again.manifest.key == first.manifest.key


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_pushed_versions_record_the_base_model_fingerprint_workers_check(sdk, zoo, arch, tmp_path):
    from peft import LoraConfig, get_peft_model

    from adapterfleet.store.base_model import fingerprint

    z = zoo[arch]
    base_fp = fingerprint(load_base_model(z["base"]))
    model = from_store(load_base_model(z["base"]), str(sdk.push(z["b"], f"acme/fp-{arch}").manifest.key), store=sdk)
    assert fingerprint(model) == base_fp  # LoRA wrappers looked through
    pushed = push_from_peft(model, f"acme/fp-{arch}-copy", store=sdk)
    assert pushed.manifest.base_model.fingerprint == base_fp
    # modules_to_save wrappers are looked through too
    targets = ["q_proj"] if arch == "llama" else ["c_attn"]
    saved = ["lm_head"]
    wrapped = get_peft_model(load_base_model(z["base"]), LoraConfig(r=2, target_modules=targets,
                                                                  modules_to_save=saved))
    assert fingerprint(wrapped) == base_fp


def test_a_non_default_adapter_name_pushes_from_its_subdirectory(sdk, zoo):
    from peft import get_peft_model_state_dict

    z = zoo["llama"]
    source = str(sdk.push(z["b"], "acme/src").manifest.key)
    model = from_store(load_base_model(z["base"]), "acme/src", adapter_name="mine", is_trainable=True, store=sdk)
    _train(model, steps=1)
    outcome = push_from_peft(model, "acme/mine", adapter_name="mine", store=sdk)
    assert outcome.manifest.version == 1 and outcome.manifest.parent == source
    trained = get_peft_model_state_dict(model, adapter_name="mine")
    pulled = _pulled_state(sdk, str(outcome.manifest.key))
    assert pulled.keys() == trained.keys() and all(torch.equal(pulled[k], trained[k]) for k in trained)
    assert push_from_peft(model, "acme/orphan", adapter_name="mine", parent="", store=sdk).manifest.parent == ""
    with pytest.raises(InvalidArgument, match=r"'nope'.*mine"):
        push_from_peft(model, "acme/mine", adapter_name="nope", store=sdk)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_different_base_model_is_incompatible_naming_module_and_shapes(sdk, zoo, arch):
    z = zoo[arch]
    sdk.push(z["a"], "acme/narrow")
    with pytest.raises(Incompatible) as err:
        from_store(load_base_model(z["wrong_base"]), "acme/narrow", store=sdk)
    message = str(err.value)
    module = FIRST_MODULE[arch]
    base_shape = "[48, 48]" if arch == "llama" else "[48, 144]"  # GPT-2 Conv1D stores [in, out]
    assert f"adapter tensor base_model.model.{module}.lora_A.weight has shape [8, 32]" in message
    assert f"base module {module} takes in_features=48 (shape {base_shape})" in message
    assert "different base model" in message and "more tensors do not fit" in message


def test_an_adapter_for_another_architecture_names_the_missing_modules(sdk, zoo):
    sdk.push(zoo["gpt2"]["a"], "acme/gpt2-only")
    with pytest.raises(Incompatible, match=r"targets modules \['c_attn', 'c_proj'\].*LlamaForCausalLM"):
        from_store(load_base_model(zoo["llama"]["base"]), "acme/gpt2-only", store=sdk)


def test_a_module_the_base_lacks_is_named(zoo, tmp_path):
    z = zoo["llama"]
    shallow = make_base_model("llama", tmp_path / "shallow", seed=0, num_hidden_layers=1)
    missing = r"adapter targets model\.layers\.1\.self_attn\.q_proj \(tensor .*\) but the base model has no such module"
    with pytest.raises(Incompatible, match=missing):
        preflight(load_base_model(shallow), z["a"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_preflight_accepts_every_variant_on_its_base_and_names_a_resized_vocabulary(zoo, arch, tmp_path):
    """No false alarms (DoRA, embeddings, modules_to_save, biases, rank patterns); a vocabulary that differs is
    caught on the tensors that depend on it."""
    base = load_base_model(zoo[arch]["base"])
    resized = load_base_model(make_base_model(arch, tmp_path / "resized", seed=0, vocab_size=160))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for variant in ADAPTER_VARIANTS:
            if (kwargs := variant_config(arch, variant)) is None:
                continue
            kwargs.pop("train_steps", None)
            adapter = make_peft_adapter(zoo[arch]["base"], tmp_path / variant, seed=3, **kwargs)
            assert preflight(base, adapter) == "cpu", variant
            if variant in ("embedding", "modules_to_save", "dora"):  # dora here also targets the embedding
                with pytest.raises(Incompatible, match=r"has shape \[[^\]]*128[^\]]*\] but .*160"):
                    preflight(resized, adapter)
            else:
                preflight(resized, adapter)  # shapes that do not depend on the vocabulary still fit


def test_missing_files_are_invalid_adapters_naming_the_file(zoo, tmp_path):
    model = load_base_model(zoo["llama"]["base"])
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        broken = tmp_path / f"no-{name}"
        shutil.copytree(zoo["llama"]["a"], broken)
        (broken / name).unlink()
        with pytest.raises(InvalidAdapter, match=f"has no {name}; .*save_pretrained"):
            preflight(model, broken)
    pickled = tmp_path / "pickled"
    shutil.copytree(zoo["llama"]["a"], pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InvalidAdapter, match=r"adapter_model\.bin, a pickle.*safe_serialization=True"):
        preflight(model, pickled)
    nested = tmp_path / "nested"
    shutil.copytree(zoo["llama"]["a"], nested / "mine")
    with pytest.raises(InvalidAdapter, match=f"subdirectory named after it: use {nested / 'mine'}"):
        preflight(model, nested)


def test_a_base_model_on_the_meta_device_must_be_materialised_first(sdk, zoo):
    from transformers import AutoModelForCausalLM

    sdk.push(zoo["llama"]["a"], "acme/a")
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(base_config("llama"))
    with pytest.raises(FailedPrecondition, match=r"'meta' device.*Materialise the base model first"):
        from_store(meta_model, "acme/a", store=sdk)


def test_adapters_load_onto_the_base_model_device(sdk, zoo):
    z = zoo["llama"]
    assert load_device(load_base_model(z["base"])) == "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the placement on cuda is checked where one exists")
    sdk.push(z["a"], "acme/a")
    model = from_store(load_base_model(z["base"]).to("cuda"), "acme/a", store=sdk)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    reference = from_store(load_base_model(z["base"]), "acme/a", store=sdk)
    assert torch.allclose(logits(model).cpu(), logits(reference), atol=1e-4)


def test_without_peft_the_error_says_how_to_install_it(zoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'adapterfleet\[peft\]'"):
        from_store(load_base_model(zoo["llama"]["base"]), "acme/a", store="127.0.0.1:1")
