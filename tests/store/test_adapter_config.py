"""adapterfleet.store.adapter_config: strict parse of adapter_config.json, and PEFT's own matching semantics
replicated."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec, parse_adapter_config

REPO = Path(__file__).resolve().parents[2]


def cfg(**kw) -> dict:
    d = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    d.update(kw)
    return d


def parse(d: dict, **kw) -> LoraSpec:
    return parse_adapter_config(json.dumps(d).encode(), **kw)


def refused(d: dict | bytes, **kw) -> str:
    data = d if isinstance(d, bytes) else json.dumps(d).encode()
    with pytest.raises(InvalidAdapter) as e:
        parse_adapter_config(data, **kw)
    assert e.value.code == "INVALID_ARGUMENT"
    return e.value.message


def test_minimal_config_parses_with_defaults():
    spec = parse(cfg())
    assert spec == LoraSpec(
        r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"), exclude_modules=None, modules_to_save=(),
        rank_pattern={}, alpha_pattern={}, use_rslora=False, use_dora=False, fan_in_fan_out=False, bias="none",
        layers_to_transform=None, layers_pattern=None, base_model_name_or_path=None, task_type=None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.r = 4  # type: ignore[misc]


def test_config_written_by_peft_parses(tmp_path):
    from peft import LoraConfig

    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(tmp_path)
    spec = parse_adapter_config((tmp_path / "adapter_config.json").read_bytes())
    assert (spec.r, spec.lora_alpha, spec.target_modules, spec.task_type) == (4, 8, ("q_proj",), "CAUSAL_LM")


def test_full_config_fields():
    spec = parse(cfg(
        target_modules=["v_proj", "q_proj", "q_proj"], exclude_modules=["lm_head"], modules_to_save=["score"],
        rank_pattern={"q_proj": 4}, alpha_pattern={"v_proj": 2.5}, use_rslora=True, use_dora=True,
        fan_in_fan_out=True, bias="lora_only", layers_to_transform=[1, 0], layers_pattern="layers",
        base_model_name_or_path="org/base", task_type="CAUSAL_LM",
    ))
    assert spec.target_modules == ("q_proj", "v_proj")  # a set in PEFT: sorted, deduplicated
    assert spec.exclude_modules == ("lm_head",) and spec.modules_to_save == ("score",)
    assert spec.rank_pattern == {"q_proj": 4} and spec.alpha_pattern == {"v_proj": 2.5}
    assert (spec.use_rslora, spec.use_dora, spec.fan_in_fan_out, spec.bias) == (True, True, True, "lora_only")
    assert spec.layers_to_transform == (0, 1) and spec.layers_pattern == ("layers",)
    assert (spec.base_model_name_or_path, spec.task_type) == ("org/base", "CAUSAL_LM")
    assert parse(cfg(layers_to_transform=3)).layers_to_transform == (3,)
    assert parse(cfg(layers_to_transform=[])).layers_to_transform is None  # PEFT treats [] as "all layers"
    assert parse(cfg(target_modules=r".*\.q_proj")).target_modules == r".*\.q_proj"
    assert parse(cfg(exclude_modules=r".*\.0\..*")).exclude_modules == r".*\.0\..*"
    assert parse(cfg(bias=None, use_dora=None)).bias == "none"


# ---- JSON-level failures ------------------------------------------------------------------------------------------


def test_invalid_json_names_the_position():
    msg = refused(b'{"peft_type": "LORA",\n  "r": 8,,}')
    assert msg.startswith("adapter_config.json: invalid JSON: ") and "line 2 column 10 (char 31)" in msg


def test_not_utf8():
    assert "not UTF-8" in refused(b'{"peft_type": "\xff"}')


def test_size_limit():
    assert refused(json.dumps(cfg()).encode() + b" " * 100, max_bytes=64).endswith("more than the 64-byte limit")


@pytest.mark.parametrize("doc", [[], "LORA", 3])
def test_top_level_must_be_object(doc):
    assert "the top level must be a JSON object" in refused(doc)


def test_duplicate_keys_refused():
    assert "key 'r' appears twice" in refused(b'{"peft_type": "LORA", "r": 8, "r": 64}')


def test_nan_refused():
    assert "NaN is not valid JSON" in refused(b'{"peft_type": "LORA", "r": 8, "lora_alpha": NaN}')


# ---- peft_type and required keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("peft_type", ["IA3", "LOHA", "LOKR", "PROMPT_TUNING", "PREFIX_TUNING", "ADALORA", "BOFT",
                                       "OFT", "VERA", "XLORA", "lora"])
def test_other_peft_types_refused_by_name(peft_type):
    assert refused({"peft_type": peft_type, "target_modules": ["q_proj"]}) == (  # named even without r/lora_alpha
        f"adapter_config.json: peft_type {peft_type} is not supported; "
        "adapterfleet serves LoRA adapters (peft_type LORA)"
    )


def test_missing_required_keys_are_named():
    msg = refused({"peft_type": "LORA", "r": 8})
    assert "missing required key(s): lora_alpha, target_modules;" in msg
    assert "missing required key(s): peft_type, r, lora_alpha, target_modules" in refused({})
    assert "missing required key(s): target_modules" in refused(cfg(target_modules=None))


# ---- ranks and values ---------------------------------------------------------------------------------------------


def test_rank_above_max_rank():
    assert refused(cfg(r=128), max_rank=64) == "adapter_config.json: r: LoRA rank 128 is greater than max_rank 64"
    assert parse(cfg(r=64), max_rank=64).r == 64


@pytest.mark.parametrize("r", [0, -1, 8.0, "8", True])
def test_rank_must_be_positive_int(r):
    assert "r must be a positive integer" in refused(cfg(r=r))


def test_rank_pattern_values_checked():
    msg = refused(cfg(rank_pattern={"q_proj": 128}), max_rank=64)
    assert msg == "adapter_config.json: rank_pattern['q_proj']: LoRA rank 128 is greater than max_rank 64"
    assert "rank_pattern['q_proj'] must be a positive integer, got 0" in refused(cfg(rank_pattern={"q_proj": 0}))
    assert "rank_pattern must be an object" in refused(cfg(rank_pattern=["q_proj"]))
    assert "rank_pattern key '(' is not a valid regular expression" in refused(cfg(rank_pattern={"(": 4}))


@pytest.mark.parametrize("alpha", ["16", None, True, [16]])
def test_lora_alpha_must_be_number(alpha):
    msg = refused(cfg(lora_alpha=alpha))
    assert "lora_alpha must be a finite number" in msg or "missing required key(s): lora_alpha" in msg


def test_alpha_pattern_values_checked():
    assert "alpha_pattern['q_proj'] must be a finite number" in refused(cfg(alpha_pattern={"q_proj": "x"}))


def test_bias_must_be_allowed_value():
    assert "bias must be one of none, all, lora_only, got 'some'" in refused(cfg(bias="some"))


@pytest.mark.parametrize("key", ["use_rslora", "use_dora", "fan_in_fan_out"])
def test_flags_must_be_bool(key):
    assert f"{key} must be true or false, got 'yes'" in refused(cfg(**{key: "yes"}))


@pytest.mark.parametrize("key", ["base_model_name_or_path", "task_type"])
def test_optional_strings(key):
    assert f"{key} must be a string or null" in refused(cfg(**{key: 3}))


# ---- module selection fields --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tm, expect", [
    ([], "target_modules is empty"),
    ("all-linear", "target_modules 'all-linear' is a shorthand that needs the base model"),
    ("(", "target_modules '(' is not a valid regular expression"),
    ("", "target_modules must not be an empty string"),
    ([1], "target_modules must be a list of module names or a regex string"),
    ({"q_proj": 1}, "target_modules must be a list of module names or a regex string"),
])
def test_target_modules_checked(tm, expect):
    assert expect in refused(cfg(target_modules=tm))


def test_exclude_and_modules_to_save_checked():
    assert "exclude_modules must be a list of module names or a regex string" in refused(cfg(exclude_modules=5))
    assert "modules_to_save must be a list of module names, got 'lm_head'" in refused(cfg(modules_to_save="lm_head"))
    assert "modules_to_save entry '(' is not a valid regular expression" in refused(cfg(modules_to_save=["("]))


def test_layers_fields_checked():
    assert "layers_to_transform must be a layer index or a list of them" in refused(cfg(layers_to_transform=[-1]))
    assert "layers_to_transform must be a layer index" in refused(cfg(layers_to_transform="0"))
    assert "layers_pattern must be a module-list name" in refused(cfg(layers_to_transform=[0], layers_pattern=[3]))
    assert "layers_pattern is set but layers_to_transform is not" in refused(cfg(layers_pattern="layers"))
    msg = refused(cfg(target_modules=".*q_proj", layers_to_transform=[0]))
    assert "cannot be used when target_modules is a regex string" in msg


# ---- fields that change inference math ----------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("layer_replication", [[0, 2], [1, 2]]),
    ("lora_bias", True),
    ("target_parameters", ["mlp.experts.gate_up_proj"]),
    ("trainable_token_indices", [1, 2]),
    ("alora_invocation_tokens", [5, 6]),
    ("use_qalora", True),
    ("megatron_config", {"tensor_model_parallel_size": 2}),
    ("velora_config", {"rank": 4}),
    ("monteclora_config", {"n_samples": 4}),
    ("use_bdlora", {"nblocks": 2}),
    ("arrow_config", {"top_k": 2}),
    ("kasa_config", {"beta": 1.0}),
    ("ensure_weight_tying", True),
])
def test_unsupported_fields_refused_by_name(key, value):
    msg = refused(cfg(**{key: value}))
    assert msg.startswith(f"adapter_config.json: {key}=") and "is not supported" in msg
    assert f"save the adapter without {key}" in msg


def test_unsupported_fields_at_defaults_accepted(tmp_path):
    """Every field at the default PEFT writes (None/False/[]/{}) is accepted."""
    from peft import LoraConfig

    LoraConfig(target_modules=["q_proj"]).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    for key in ("layer_replication", "lora_bias", "target_parameters", "trainable_token_indices",
                "alora_invocation_tokens", "use_qalora", "megatron_config", "velora_config", "monteclora_config",
                "use_bdlora", "arrow_config", "kasa_config", "ensure_weight_tying"):
        assert key in written  # the list above tracks the installed PEFT's LoraConfig
    parse(written)
    parse(cfg(layer_replication=[], target_parameters=[], trainable_token_indices={}))


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "lora_ga"])
def test_base_modifying_init_refused(init):
    assert "path_initial_model_for_weight_conversion" in refused(cfg(init_lora_weights=init))


@pytest.mark.parametrize("extra", [
    {"lora_dropout": 0.1}, {"init_lora_weights": "gaussian"}, {"init_lora_weights": False},
    {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}}, {"revision": "main"},
    {"inference_mode": False}, {"auto_mapping": {"base_model_class": "X"}}, {"peft_version": "0.21.2"},
    {"megatron_core": "megatron.core"}, {"qalora_group_size": 32}, {"eva_config": {"rho": 2.0}},
    {"some_future_field": {"x": 1}},
])
def test_training_only_and_unknown_fields_accepted(extra):
    assert parse(cfg(**extra)).r == 8


# ---- targets(): PEFT's check_target_module_exists, replicated ----------------------------------------------------

_KEYS = [
    "model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj", "model.layers.10.mlp.up_proj", "model.layers.1.mlp.down_proj", "lm_head",
    "q_proj", "model.layers.0.self_attn.xq_proj", "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn",
    "transformer.h.1.mlp.c_proj", "model.decoder.layers.1.experts.0.q_proj", "score",
]
_SELECTIONS = [
    dict(target_modules=["q_proj", "v_proj"]),
    dict(target_modules=["q_proj", "model.layers.1.mlp.down_proj"], layers_to_transform=[0]),
    dict(target_modules=["q_proj", "c_attn", "up_proj"], layers_to_transform=[1, 10]),
    dict(target_modules=["q_proj", "c_attn"], layers_to_transform=[1], layers_pattern=["h", "layers"]),
    dict(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="decoder.layers"),
    dict(target_modules=r".*\.(q_proj|c_attn)"),
    dict(target_modules=r"model\.layers\.\d+\.self_attn\..*_proj", exclude_modules=r".*\.0\..*"),
    dict(target_modules=["q_proj", "v_proj", "lm_head"], exclude_modules=["v_proj", "model.layers.1.self_attn.q_proj"]),
    dict(target_modules=["q_proj", "up_proj", "lm_head", "score"], modules_to_save=["lm_head", "layers.1"]),
    dict(target_modules=["embed_tokens", "c_proj"], modules_to_save=["mlp"]),
]


@pytest.mark.parametrize("selection", _SELECTIONS)
def test_targets_matches_peft(selection):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    spec = parse(cfg(**selection))
    peft_config = LoraConfig(r=8, lora_alpha=16, **selection)
    got = {k: spec.targets(k) for k in _KEYS}
    want = {k: bool(check_target_module_exists(peft_config, k)) for k in _KEYS}
    assert got == want
    assert any(got.values())  # each selection selects something, so the comparison is not vacuous


def test_is_module_to_save_is_peft_endswith():
    spec = parse(cfg(modules_to_save=["lm_head", "layers.1.mlp"]))
    assert spec.is_module_to_save("lm_head") and spec.is_module_to_save("model.layers.1.mlp")
    assert spec.is_module_to_save("xlm_head")  # PEFT's _set_trainable uses a plain endswith
    assert not spec.is_module_to_save("model.layers.1.mlp.up_proj") and not spec.is_module_to_save("lm")


# ---- rank_for / alpha_for / scaling_for: PEFT's get_pattern_key, replicated ----------------------------------------


def test_rank_and_alpha_patterns_match_peft_get_pattern_key():
    from peft.utils.other import get_pattern_key

    rank_pattern = {"q_proj": 4, r"layers\.1\.self_attn\.v_proj": 2, "^model.layers.0.mlp.up_proj": 6, "mlp.*": 3}
    alpha_pattern = {"layers.0.self_attn.q_proj": 1.5, "v_proj": 7}
    spec = parse(cfg(rank_pattern=rank_pattern, alpha_pattern=alpha_pattern))
    keys = [*_KEYS, "model.layers.0.mlp.up_proj", "model.layers.1.self_attn.v_proj", "model.layers.0.mlp"]
    for k in keys:
        assert spec.rank_for(k) == rank_pattern.get(get_pattern_key(rank_pattern.keys(), k), 8), k
        assert spec.alpha_for(k) == alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), k), 16), k
    assert spec.rank_for("model.layers.1.self_attn.v_proj") == 2 and spec.rank_for("lm_head") == 8
    assert spec.rank_for("model.layers.0.mlp.up_proj") == 6  # first matching key wins, in file order
    assert spec.alpha_for("model.layers.0.self_attn.q_proj") == 1.5 and spec.alpha_for("lm_head") == 16


def test_scaling_for():
    spec = parse(cfg(r=16, lora_alpha=32, rank_pattern={"v_proj": 4}))
    assert spec.scaling_for("a.q_proj") == 2.0 and spec.scaling_for("a.v_proj") == 8.0
    rs = parse(cfg(r=16, lora_alpha=32, use_rslora=True, rank_pattern={"v_proj": 4}))
    assert rs.scaling_for("a.q_proj") == 32 / math.sqrt(16) and rs.scaling_for("a.v_proj") == 16.0


def test_store_modules_do_not_import_torch():
    code = ("import sys, store.adapter_config, store.safetensors_header, store.validation; "
            "bad = {'torch', 'peft', 'transformers', 'safetensors'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={"PYTHONPATH": str(REPO)})
