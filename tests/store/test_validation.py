"""adapterfleet.store.validation: file rules, PEFT key forms, and tensors against the config, on real PEFT adapters
and on hand-made broken ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as np_save

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec, parse_adapter_config
from adapterfleet.store.peft_keys import parse_peft_key
from adapterfleet.store.safetensors_header import SafetensorsHeader, header_bytes_needed, parse_header
from adapterfleet.store.validation import (
    PICKLE_SUFFIXES,
    REQUIRED_FILES,
    check_adapter,
    check_file_name,
    check_file_set,
)

P = "base_model.model."

# ---- file names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors", "README.md", "notes.txt",
                                  "training_args.json", "tokenizer_config.json", "résumé.md", "LICENSE.TXT"])
def test_allowed_file_names(name):
    check_file_name(name)


@pytest.mark.parametrize("name, expect", [
    ("", "file name must be a non-empty string"),
    ("a/b.json", "contains a path separator or NUL"),
    ("a\\b.json", "contains a path separator or NUL"),
    ("x\x00.json", "contains a path separator or NUL"),
    ("..", "must not start with '.' or contain '..'"),
    ("a..json", "must not start with '.' or contain '..'"),
    (".hidden.json", "must not start with '.' or contain '..'"),
    ("bad\n.md", "contains non-printable characters"),
    ("x" * 300 + ".json", "is longer than 255 bytes"),
    ("é" * 130 + ".md", "is longer than 255 bytes"),  # the bound is in UTF-8 bytes
    ("model.safetensors", "file model.safetensors is not allowed in an adapter directory; allowed: "
                          "adapter_config.json, adapter_model.safetensors, README.md and other *.json, *.md, *.txt"),
    ("run.py", "file run.py is not allowed"),
    ("adapter_model.onnx", "file adapter_model.onnx is not allowed"),
])
def test_refused_file_names(name, expect):
    with pytest.raises(InvalidAdapter) as e:
        check_file_name(name)
    assert expect in e.value.message


@pytest.mark.parametrize("name", ["adapter_model.bin", "x.pt", "x.PTH", "x.pkl", "x.pickle", "x.ckpt"])
def test_pickle_files_refused_with_conversion_hint(name):
    assert name.lower().endswith(PICKLE_SUFFIXES)
    with pytest.raises(InvalidAdapter) as e:
        check_file_name(name)
    msg = e.value.message
    assert msg.startswith(f"{name} is a pickle file; adapterfleet never loads pickles")
    assert "PeftModel.save_pretrained(dir, safe_serialization=True)" in msg
    assert "weights_only=True" in msg and "safetensors.torch.save_file(state_dict" in msg


def test_file_set():
    check_file_set(["README.md", *REQUIRED_FILES])
    cases = [
        (["adapter_config.json", "adapter_model.safetensors", "adapter_config.json"],
         "file adapter_config.json is pushed twice; push each file once"),
        (["README.md", "readme.md", *REQUIRED_FILES], "README.md and readme.md differ only in case"),
        (["adapter_config.json"], "adapter directory is missing adapter_model.safetensors;"),
        (["README.md"], "missing adapter_config.json and adapter_model.safetensors;"),
        ([*REQUIRED_FILES, "adapter_model.bin"], "adapter_model.bin is a pickle file"),
        ([*REQUIRED_FILES, *(f"n{i}.txt" for i in range(70))], "at most 64 files, got 72"),
    ]
    for names, expect in cases:
        with pytest.raises(InvalidAdapter) as e:
            check_file_set(names)
        assert expect in e.value.message, names


# ---- key forms ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, want", [
    ("model.layers.0.self_attn.q_proj.lora_A.weight", ("model.layers.0.self_attn.q_proj", "lora_A.weight")),
    ("model.layers.0.self_attn.q_proj.lora_B.weight", ("model.layers.0.self_attn.q_proj", "lora_B.weight")),
    ("model.layers.0.self_attn.q_proj.lora_B.bias", ("model.layers.0.self_attn.q_proj", "lora_B.bias")),
    ("model.embed_tokens.lora_embedding_A", ("model.embed_tokens", "lora_embedding_A")),
    ("model.embed_tokens.lora_embedding_B", ("model.embed_tokens", "lora_embedding_B")),
    ("transformer.h.0.attn.c_attn.lora_magnitude_vector", ("transformer.h.0.attn.c_attn", "lora_magnitude_vector")),
    ("model.embed_tokens.base_layer.weight", ("model.embed_tokens", "base_layer.weight")),
    ("transformer.h.1.attn.c_attn.base_layer.bias", ("transformer.h.1.attn.c_attn", "base_layer.bias")),
    ("transformer.h.0.ln_1.bias", ("transformer.h.0.ln_1", "bias")),
    ("lm_head.weight", ("lm_head", "weight")),
    ("model.layers.1.mlp.up_proj.weight", ("model.layers.1.mlp.up_proj", "weight")),
    ("bias", ("", "bias")),
])
def test_parse_peft_key(key, want):
    parsed = parse_peft_key(P + key)
    assert (parsed.module, parsed.param) == want


def test_key_without_peft_prefix_refused():
    refusal = re.escape("does not start with 'base_model.model.'; this is not a PEFT adapter")
    with pytest.raises(InvalidAdapter, match=refusal):
        parse_peft_key("model.layers.0.self_attn.q_proj.lora_A.weight")
    with pytest.raises(InvalidAdapter, match="has an empty parameter name"):
        parse_peft_key(P + "lm_head.")


# ---- real PEFT adapters round-trip --------------------------------------------------------------------------------

_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False)
_CASES = {
    "llama_rank_alpha_patterns": ("llama", {}, dict(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        rank_pattern={"o_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        alpha_pattern={"v_proj": 3, "layers.0.mlp.down_proj": 5}, task_type="CAUSAL_LM")),
    "llama_rslora_dora": ("llama", {}, dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_rslora=True, use_dora=True)),
    "llama_regex_modules_to_save_bias_all": ("llama", dict(attention_bias=True, mlp_bias=True), dict(
        r=4, lora_alpha=4, target_modules=r".*\.(q_proj|up_proj)", modules_to_save=["lm_head", "layers.1.mlp"],
        bias="all")),
    "llama_embedding_lm_head_dora": ("llama", {}, dict(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head", "v_proj"], use_dora=True,
        rank_pattern={"lm_head": 2})),
    "gpt2_fan_in_fan_out_dora_lora_only": ("gpt2", {}, dict(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, use_dora=True,
        bias="lora_only", modules_to_save=["ln_f"])),
    "gpt2_embedding_bias_all_layers": ("gpt2", {}, dict(
        r=2, lora_alpha=4, target_modules=["wte", "c_fc", "c_attn"], fan_in_fan_out=True, bias="all",
        layers_to_transform=[1], layers_pattern="h")),
}


def _base_model(arch: str, overrides: dict):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**{**_LLAMA, **overrides}))
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                      bos_token_id=0, eos_token_id=0, **overrides))


def _read(adir: Path) -> tuple[LoraSpec, SafetensorsHeader]:
    spec = parse_adapter_config((adir / "adapter_config.json").read_bytes())
    blob = (adir / "adapter_model.safetensors").read_bytes()
    need = header_bytes_needed(blob)
    assert need is not None
    return spec, parse_header(blob[:need], len(blob))


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory):
    """name -> (adapter dir, PeftModel, names of the base model's modules)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    out = {}
    for name, (arch, overrides, lora) in _CASES.items():
        base = _base_model(arch, overrides)
        module_names = [n for n, _ in base.named_modules() if n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora))
            adir = tmp_path_factory.mktemp(name)
            model.save_pretrained(adir)
        out[name] = (adir, model, module_names)
    return out


@pytest.mark.parametrize("case", list(_CASES))
def test_peft_adapter_validates(peft_adapters, case):
    adir, _, _ = peft_adapters[case]
    spec, header = _read(adir)
    check_file_set(sorted(p.name for p in adir.iterdir()))
    check_adapter(spec, header)


@pytest.mark.parametrize("case", list(_CASES))
def test_spec_agrees_with_peft_model(peft_adapters, case):
    """targets()/is_module_to_save()/rank_for()/alpha_for()/scaling_for() equal what PEFT built, module by module."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    adir, model, module_names = peft_adapters[case]
    spec, _ = _read(adir)
    root = model.base_model.model
    lora_layers = 0
    for name in module_names:
        try:
            module = root.get_submodule(name)
        except AttributeError:  # moved under a ModulesToSaveWrapper: not a LoRA target
            module = None
        is_lora = isinstance(module, LoraLayer)
        assert spec.targets(name) == is_lora, name
        assert spec.is_module_to_save(name) == isinstance(module, ModulesToSaveWrapper), name
        if is_lora:
            lora_layers += 1
            assert spec.rank_for(name) == module.r["default"], name
            assert spec.alpha_for(name) == module.lora_alpha["default"], name
            assert spec.scaling_for(name) == module.scaling["default"], name
    assert lora_layers > 0


def test_peft_patterns_are_exercised(peft_adapters):
    """The rank/alpha patterns above really give different ranks and scalings, so the comparison can fail."""
    _, model, _ = peft_adapters["llama_rank_alpha_patterns"]
    root = model.base_model.model
    assert root.get_submodule("model.layers.1.self_attn.q_proj").r["default"] == 6
    assert root.get_submodule("model.layers.0.self_attn.o_proj").r["default"] == 2
    assert root.get_submodule("model.layers.0.mlp.down_proj").scaling["default"] == 5 / 8


def test_key_forms_written_by_peft(peft_adapters):
    """Every key form PEFT writes for these adapters is one parse_peft_key knows."""
    params = set()
    for adir, _, _ in peft_adapters.values():
        _, header = _read(adir)
        params |= {parse_peft_key(k).param for k in header.tensors}
    assert params == {"lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B",
                      "lora_magnitude_vector", "base_layer.weight", "base_layer.bias", "bias", "weight"}


def test_peft_adapter_with_wrong_config_refused(peft_adapters):
    adir, _, _ = peft_adapters["llama_rank_alpha_patterns"]
    config = json.loads((adir / "adapter_config.json").read_text())
    config["rank_pattern"] = {"o_proj": 2}  # drop the q_proj rank of layer 1
    _, header = _read(adir)
    with pytest.raises(InvalidAdapter, match=r"model.layers.1.self_attn.q_proj: .* gives it rank 8 \(r\)"):
        check_adapter(LoraSpec.from_dict(config), header)


# ---- hand-made broken adapters ------------------------------------------------------------------------------------


def spec_of(**kw) -> LoraSpec:
    d = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    d.update(kw)
    return LoraSpec.from_dict(d)


def header_of(tensors: dict[str, tuple]) -> SafetensorsHeader:
    """{key without prefix: shape or (shape, numpy dtype)} -> parsed header of a real safetensors file."""
    arrays = {}
    for k, v in tensors.items():
        shape, dtype = v if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], type) else (v, np.float32)
        arrays[P + k] = np.zeros(shape, dtype)
    blob = np_save(arrays)
    return parse_header(blob, len(blob))


Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
GOOD = {f"{Q}.lora_A.weight": (4, 32), f"{Q}.lora_B.weight": (32, 4),
        f"{V}.lora_A.weight": (4, 32), f"{V}.lora_B.weight": (16, 4)}


def refused(spec: LoraSpec, tensors: dict) -> str:
    with pytest.raises(InvalidAdapter) as e:
        check_adapter(spec, header_of(tensors))
    return e.value.message


def test_good_synthetic_adapter():
    check_adapter(spec_of(), header_of(GOOD))


def test_lora_tensor_on_untargeted_module():
    msg = refused(spec_of(), {**GOOD, "model.layers.0.self_attn.k_proj.lora_A.weight": (4, 32)})
    assert msg.startswith(f"adapter_model.safetensors: tensor {P}model.layers.0.self_attn.k_proj.lora_A.weight ")
    assert "module model.layers.0.self_attn.k_proj is not selected by target_modules=('q_proj', 'v_proj')" in msg


@pytest.mark.parametrize("a, b, spec_kw, origin", [
    ((8, 32), (32, 8), {}, "rank 4 (r)"),  # both factors rank 8, config says 4
    ((4, 32), (32, 8), {}, "rank 4 (r)"),  # A's out != B's in
    ((4, 32), (32, 4), {"rank_pattern": {"q_proj": 2}}, "rank 2 (rank_pattern 'q_proj')"),
])
def test_rank_mismatch_names_tensors_shapes_and_rank(a, b, spec_kw, origin):
    msg = refused(spec_of(**spec_kw), {**GOOD, f"{Q}.lora_A.weight": a, f"{Q}.lora_B.weight": b})
    assert f"module {Q}: {P}{Q}.lora_A.weight is {list(a)} and {P}{Q}.lora_B.weight is {list(b)}" in msg
    assert f"adapter_config.json gives it {origin}" in msg


@pytest.mark.parametrize("drop, have, want", [("lora_B.weight", "lora_A.weight", "lora_B.weight"),
                                              ("lora_A.weight", "lora_B.weight", "lora_A.weight")])
def test_missing_factor(drop, have, want):
    tensors = {k: v for k, v in GOOD.items() if k != f"{Q}.{drop}"}
    assert f"module {Q} has {have} but no {want}" in refused(spec_of(), tensors)


def test_embedding_factors_and_mixed_forms():
    emb = "model.embed_tokens"
    spec = spec_of(target_modules=["embed_tokens", "q_proj", "v_proj"])
    check_adapter(spec, header_of({**GOOD, f"{emb}.lora_embedding_A": (4, 64), f"{emb}.lora_embedding_B": (32, 4),
                                   f"{emb}.base_layer.weight": (64, 32)}))
    msg = refused(spec, {**GOOD, f"{emb}.lora_embedding_A": (4, 64), f"{emb}.lora_embedding_B": (32, 2)})
    assert f"{emb}.lora_embedding_B is [32, 2]" in msg and "gives it rank 4 (r)" in msg
    msg = refused(spec, {**GOOD, f"{emb}.lora_embedding_A": (4, 64), f"{emb}.lora_embedding_B": (32, 4),
                         f"{emb}.base_layer.weight": (32, 64)})
    assert "base_layer.weight [32, 64]: does not fit" in msg and "expected [64, 32]" in msg
    assert "has both lora_A/lora_B and lora_embedding_A/B" in refused(
        spec, {**GOOD, f"{Q}.lora_embedding_A": (4, 64), f"{Q}.lora_embedding_B": (32, 4)})


def test_shapes_must_be_2d_and_nonzero():
    assert "expected a 2-D [r, in_features] matrix" in refused(spec_of(), {**GOOD, f"{Q}.lora_A.weight": (4, 32, 1)})
    assert "expected a 2-D [out_features, r] matrix" in refused(spec_of(), {**GOOD, f"{Q}.lora_B.weight": (32 * 4,)})
    assert "were ZeRO-3/FSDP shards gathered" in refused(spec_of(), {**GOOD, f"{Q}.lora_A.weight": (4, 0)})


def test_lora_dtype_must_be_float():
    assert "dtype I32 is not a float dtype" in refused(spec_of(), {**GOOD, f"{Q}.lora_A.weight": ((4, 32), np.int32)})
    check_adapter(spec_of(), header_of({**GOOD, f"{Q}.lora_A.weight": ((4, 32), np.float16)}))


def test_dora_magnitude_rules():
    dora = spec_of(use_dora=True)
    mags = {f"{Q}.lora_magnitude_vector": (32,), f"{V}.lora_magnitude_vector": (16,)}
    check_adapter(dora, header_of({**GOOD, **mags}))
    msg = refused(dora, {**GOOD, f"{Q}.lora_magnitude_vector": (32,)})
    assert f"use_dora=true but module {V} has no lora_magnitude_vector" in msg
    msg = refused(dora, {**GOOD, **mags, f"{V}.lora_magnitude_vector": (32,)})
    assert f"{V}.lora_magnitude_vector [32]: expected [16], the out dimension of {P}{V}.lora_B.weight [16, 4]" in msg
    assert "use_dora=false; set use_dora=true" in refused(spec_of(), {**GOOD, **mags})
    assert f"module {Q} has no lora_A/lora_B" in refused(dora, {f"{Q}.lora_magnitude_vector": (32,)})


def test_lora_bias_refused():
    assert "lora_bias=True) is not supported" in refused(spec_of(), {**GOOD, f"{Q}.lora_B.bias": (32,)})


def test_bias_rules():
    base_bias = {f"{Q}.base_layer.bias": (32,)}
    other_bias = {"model.layers.0.mlp.up_proj.bias": (48,)}
    check_adapter(spec_of(bias="lora_only"), header_of({**GOOD, **base_bias}))
    check_adapter(spec_of(bias="all"), header_of({**GOOD, **base_bias, **other_bias}))
    assert "adapter_config.json has bias='none'" in refused(spec_of(), {**GOOD, **base_bias})
    msg = refused(spec_of(bias="lora_only"), {**GOOD, **other_bias})
    assert "a bias of module model.layers.0.mlp.up_proj" in msg and "(adapter_config.json has bias='lora_only')" in msg
    assert "expected [32], the out dimension" in refused(spec_of(bias="all"), {**GOOD, f"{Q}.base_layer.bias": (16,)})


def test_base_layer_weight_rules():
    assert "module model.layers.0.mlp.up_proj is not selected by target_modules" in refused(
        spec_of(), {**GOOD, "model.layers.0.mlp.up_proj.base_layer.weight": (48, 32)})
    bases = {f"{Q}.base_layer.weight": (32, 32), f"{V}.base_layer.weight": (16, 32)}
    check_adapter(spec_of(), header_of({**GOOD, **bases}))
    msg = refused(spec_of(), {**GOOD, f"{V}.base_layer.weight": (32, 16)})
    assert "does not fit" in msg and "expected [16, 32]" in msg
    # GPT-2 Conv1D stores [in, out]; accepted only with fan_in_fan_out
    check_adapter(spec_of(fan_in_fan_out=True), header_of({**GOOD, f"{V}.base_layer.weight": (32, 16)}))


def test_modules_to_save_rules():
    spec = spec_of(modules_to_save=["lm_head", "layers.1.mlp"])
    saved = {"lm_head.weight": (64, 32), "model.layers.1.mlp.up_proj.weight": (48, 32)}
    check_adapter(spec, header_of({**GOOD, **saved}))
    msg = refused(spec_of(), {**GOOD, "lm_head.weight": (64, 32)})
    assert f"tensor {P}lm_head.weight [64, 32]: module lm_head is neither selected by target_modules" in msg
    assert "modules_to_save=[]; add it to modules_to_save" in msg
    # PEFT never puts LoRA inside a module that is saved whole
    msg = refused(spec, {**GOOD, **saved, "model.layers.1.mlp.q_proj.lora_A.weight": (4, 32)})
    assert "module model.layers.1.mlp.q_proj is not selected by target_modules" in msg
    assert "module <root> is neither selected" in refused(spec_of(), {**GOOD, "scale": (1,)})


def test_no_lora_tensors():
    msg = "adapter_model.safetensors holds no LoRA tensors"
    assert msg in refused(spec_of(modules_to_save=["lm_head"]), {"lm_head.weight": (64, 32)})
    assert msg in refused(spec_of(), {})
