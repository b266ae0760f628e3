"""adapterfleet.store.peft_keys: the one PEFT key grammar. One list of state dicts, made from a real PEFT adapter,
goes to every user of the grammar (store validation, worker loading, SDK preflight) and to PEFT's own loader;
the three accept and refuse the same ones, and accept what PEFT loads."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.sdk.preflight import check_compatible
from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.store.peft_keys import (
    BASE_LAYER_SUFFIXES,
    KEY_PREFIX,
    LORA_SUFFIXES,
    PeftKey,
    parse_peft_key,
    parse_peft_keys,
)
from adapterfleet.store.safetensors_header import parse_header
from adapterfleet.store.validation import check_adapter
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers API
P = KEY_PREFIX
Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.1.self_attn.v_proj"
EMB = "model.embed_tokens"
# Every LoRA form PEFT writes: DoRA on Linear and Embedding layers, the embedding's base weight, biases of targeted
# (base_layer.bias) and other modules (bias="all"), and a module saved whole.
LORA = {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": ["q_proj", "v_proj", "embed_tokens"],
        "bias": "all", "modules_to_save": ["lm_head"]}

# ---- the grammar itself -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, module, param, kind, field", [
    (f"{Q}.lora_A.weight", Q, "lora_A.weight", "lora", "lora_A"),
    (f"{Q}.lora_B.weight", Q, "lora_B.weight", "lora", "lora_B"),
    (f"{EMB}.lora_embedding_A", EMB, "lora_embedding_A", "lora", "lora_A"),
    (f"{EMB}.lora_embedding_B", EMB, "lora_embedding_B", "lora", "lora_B"),
    (f"{Q}.lora_magnitude_vector", Q, "lora_magnitude_vector", "lora", "magnitude"),
    (f"{Q}.lora_magnitude_vector.weight", Q, "lora_magnitude_vector.weight", "lora", "magnitude"),
    (f"{Q}.lora_A.bias", Q, "lora_A.bias", "lora", "lora_A_bias"),
    (f"{Q}.lora_B.bias", Q, "lora_B.bias", "lora", "lora_B_bias"),
    (f"{EMB}.base_layer.weight", EMB, "base_layer.weight", "base_layer", "base_weight"),
    (f"{Q}.base_layer.bias", Q, "base_layer.bias", "base_layer", "bias"),
    ("model.layers.0.mlp.up_proj.bias", "model.layers.0.mlp.up_proj", "bias", "param", "bias"),
    ("lm_head.weight", "lm_head", "weight", "param", "weight"),
    ("model.layers.1.mlp.modules_to_save.default.up_proj.bias",  # bias="all" with a module saved whole
     "model.layers.1.mlp.modules_to_save.default.up_proj", "bias", "param", "bias"),
    ("bias", "", "bias", "param", "bias"),
])
def test_key_forms(key, module, param, kind, field):
    parsed = parse_peft_key(P + key)
    assert parsed == PeftKey(module, param, kind)
    assert parsed.field == field and parsed.key == P + key
    assert parsed.embedding == param.startswith("lora_embedding_")


def test_every_lora_suffix_has_a_field():
    assert set(LORA_SUFFIXES.values()) == {"lora_A", "lora_B", "magnitude", "lora_A_bias", "lora_B_bias"}
    assert LORA_SUFFIXES["lora_magnitude_vector"] == LORA_SUFFIXES["lora_magnitude_vector.weight"] == "magnitude"
    assert set(BASE_LAYER_SUFFIXES.values()) == {"base_weight", "bias"}


@pytest.mark.parametrize("key, expect", [
    (Q + ".lora_A.weight", "does not start with 'base_model.model.'; this is not a PEFT adapter state dict"),
    (P + "lm_head.", "has an empty parameter name"),
    (P + "model..layers.0.lora_A.weight", "has an empty module name"),
    (P + Q + ".lora_A.default.weight", "'lora_A' appears where PEFT saves none"),
    (P + Q + ".lora_C.weight", "'lora_C' appears where PEFT saves none"),
    (P + EMB + ".lora_embedding_A.weight", "'lora_embedding_A' appears where PEFT saves none"),
    (P + "lora_A.weight", "'lora_A' appears where PEFT saves none"),
])
def test_refused_keys_say_what_is_expected(key, expect):
    with pytest.raises(InvalidAdapter) as err:
        parse_peft_key(key)
    assert expect in err.value.message
    if "appears where" in expect:
        assert "expected <module>.lora_A.weight" in err.value.message and "save_pretrained()" in err.value.message


def test_key_sets():
    assert list(parse_peft_keys([P + Q + ".lora_A.weight", P + "lm_head.weight"])) == [
        P + Q + ".lora_A.weight", P + "lm_head.weight"]
    with pytest.raises(InvalidAdapter, match=r"both the DoRA magnitude of module .*q_proj .*keep one"):
        parse_peft_keys([P + Q + ".lora_magnitude_vector", P + Q + ".lora_magnitude_vector.weight"])
    with pytest.raises(InvalidAdapter, match="has both lora_A/lora_B and lora_embedding_A/B"):
        parse_peft_keys([P + Q + ".lora_A.weight", P + Q + ".lora_embedding_B"])
    with pytest.raises(InvalidAdapter, match=r"save it as .*q_proj\.base_layer\.bias \(PEFT would ignore"):
        parse_peft_keys([P + Q + ".lora_A.weight", P + Q + ".bias"])


# ---- one list of cases for every user -----------------------------------------------------------------------------

Edit = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _rename(old: str, new: str) -> Edit:
    return lambda sd: {(new if k == P + old else k): v for k, v in sd.items()}


def _add(key: str, like: str) -> Edit:
    return lambda sd: {**sd, key: sd[P + like].clone()}


def _magnitudes_as_weight(only: str = "") -> Edit:
    def edit(sd):
        return {(k + ".weight" if k.endswith(".lora_magnitude_vector") and only in k else k): v for k, v in sd.items()}
    return edit


# (name, edit of PEFT's saved state dict, None if accepted else a part of the one refusal message,
#  whether PEFT's loader itself drops a key of it).
CASES: list[tuple[str, Edit, str | None, bool]] = [
    ("as_saved", lambda sd: sd, None, False),
    ("magnitude_spelled_dot_weight", _magnitudes_as_weight(), None, False),
    ("magnitude_spellings_mixed_across_modules", _magnitudes_as_weight(only="q_proj"), None, False),
    ("no_prefix", _rename(f"{Q}.lora_A.weight", f"{Q}.lora_A.weight"), "does not start with 'base_model.model.'",
     True),
    ("empty_parameter_name", _add(P + "lm_head.", "lm_head.weight"), "has an empty parameter name", True),
    ("empty_module_name", _rename(f"{Q}.lora_A.weight", P + Q.replace(".0.", "..0.") + ".lora_A.weight"),
     "has an empty module name", True),
    ("adapter_name_left_in_key", _rename(f"{Q}.lora_A.weight", P + Q + ".lora_A.fleet.weight"),
     "'lora_A' appears where PEFT saves none", False),  # PEFT loads it only by luck: the name matches
    ("unknown_lora_suffix", _add(P + Q + ".lora_C.weight", f"{Q}.lora_A.weight"), "'lora_C' appears where", True),
    ("embedding_factor_with_weight", _rename(f"{EMB}.lora_embedding_A", P + EMB + ".lora_embedding_A.weight"),
     "'lora_embedding_A' appears where", True),
    ("lora_key_at_the_root", _add(P + "lora_A.weight", f"{Q}.lora_A.weight"), "'lora_A' appears where", True),
    ("both_magnitude_spellings", _add(P + Q + ".lora_magnitude_vector.weight", f"{Q}.lora_magnitude_vector"),
     "two spellings of one tensor", False),  # PEFT loads both into one parameter, the last one wins
    ("linear_and_embedding_factors", _rename(f"{Q}.lora_A.weight", P + Q + ".lora_embedding_A"),
     "has both lora_A/lora_B and lora_embedding_A/B", True),
    ("own_bias_next_to_lora", _add(P + Q + ".bias", f"{Q}.base_layer.bias"),
     "PEFT keeps its own parameters under base_layer", True),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(base model dir, adapter dir): a tiny Llama with biases and a real PEFT adapter of every key form."""
    root = tmp_path_factory.mktemp("peft_keys")
    base = make_base_model("llama", root / "base", seed=0, attention_bias=True, mlp_bias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = make_peft_adapter(base, root / "adapter", seed=1, **LORA)
    return base, adapter


@pytest.fixture(scope="module")
def peft_model(fleet):
    """PEFT's own model for this adapter config, under an adapter name no saved key contains."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(load_base_model(fleet[0]), LoraConfig(**LORA), adapter_name="fleet")


def _write(adapter: Path, out: Path, tensors: dict[str, torch.Tensor]) -> Path:
    out.mkdir()
    shutil.copy(adapter / "adapter_config.json", out / "adapter_config.json")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def _verdict(check: Callable[[], object]) -> str | None:
    try:
        check()
    except InvalidAdapter as err:
        return err.message
    return None


def _peft_drops_a_key(model, tensors: dict[str, torch.Tensor]) -> bool:
    """Does PEFT's set_peft_model_state_dict leave a key unused (it never complains: load_state_dict(strict=False))?"""
    from peft import set_peft_model_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = set_peft_model_state_dict(model, {k: v.clone() for k, v in tensors.items()}, adapter_name="fleet")
    missing = [k for k in result.missing_keys if ".fleet" in k]  # the adapter's own parameters, not the base's
    return bool(result.unexpected_keys or missing)


@pytest.mark.parametrize("name, edit, refusal, peft_drops", CASES, ids=[c[0] for c in CASES])
def test_store_worker_and_sdk_agree(fleet, peft_model, tmp_path, name, edit, refusal, peft_drops):
    base, adapter = fleet
    tensors = edit(load_file(str(adapter / "adapter_model.safetensors")))
    spec = LoraSpec.from_dict(json.loads((adapter / "adapter_config.json").read_text()))
    blob = save(tensors, metadata={"format": "pt"})
    directory = _write(adapter, tmp_path / name, tensors)
    model = load_base_model(base)
    verdicts = {
        "store": _verdict(lambda: check_adapter(spec, parse_header(blob, len(blob)))),
        "worker": _verdict(lambda: AdapterWeights.from_tensors(spec, tensors)),
        "worker_dir": _verdict(lambda: AdapterWeights.from_dir(directory)),
        "sdk": _verdict(lambda: check_compatible(model, directory)),
    }
    if refusal is None:
        assert verdicts == dict.fromkeys(verdicts), verdicts
    else:
        assert all(v is not None and refusal in v for v in verdicts.values()), verdicts
        assert len(set(verdicts.values())) == 1, verdicts  # one grammar, one message
    # What all three accept, PEFT loads whole; most of what they refuse, PEFT silently drops.
    assert _peft_drops_a_key(peft_model, tensors) == peft_drops
    if refusal is None:
        assert not peft_drops


def test_the_cases_cover_every_key_form_peft_writes(fleet):
    """The accepted cases hold every form of the grammar except lora_bias (which the fleet does not serve)."""
    _, adapter = fleet
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    forms = set()
    for _, edit, refusal, _ in CASES:
        if refusal is None:
            forms |= {(pk.kind, pk.param) for pk in parse_peft_keys(edit(dict(saved))).values()}
    want = {("lora", s) for s in LORA_SUFFIXES if not s.endswith(".bias")}
    want |= {("base_layer", s) for s in BASE_LAYER_SUFFIXES} | {("param", "bias"), ("param", "weight")}
    assert forms == want


def test_lora_bias_is_in_the_grammar_but_not_served(fleet):
    """PEFT loads lora_B.bias (lora_bias=True); the store and the workers refuse it by policy, saying so."""
    _, adapter = fleet
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    tensors[P + Q + ".lora_B.bias"] = torch.zeros(32)
    spec = LoraSpec.from_dict(json.loads((adapter / "adapter_config.json").read_text()))
    blob = save(tensors)
    assert parse_peft_key(P + Q + ".lora_B.bias").field == "lora_B_bias"
    with pytest.raises(InvalidAdapter, match=r"lora_bias=True\) is not supported"):
        check_adapter(spec, parse_header(blob, len(blob)))
    with pytest.raises(InvalidAdapter, match=r"lora_bias=True\) is not served"):
        AdapterWeights.from_tensors(spec, tensors)


# ---- the DoRA magnitude spelled as PEFT's parameter ---------------------------------------------------------------


def test_dora_magnitude_spelled_dot_weight_validates_and_loads_identically(fleet, tmp_path):
    """A real PEFT DoRA adapter whose magnitudes are renamed '...lora_magnitude_vector.weight' passes store
    validation and gives the worker the same tensors (and the same outputs) as the file PEFT wrote."""
    from peft import PeftModel

    base, adapter = fleet
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    renamed = _magnitudes_as_weight()(saved)
    magnitudes = [k for k in renamed if k.endswith(".lora_magnitude_vector.weight")]
    assert len(magnitudes) == 5  # q_proj and v_proj of two layers, and the embedding
    directory = _write(adapter, tmp_path / "renamed", renamed)

    spec = LoraSpec.from_dict(json.loads((adapter / "adapter_config.json").read_text()))
    blob = (directory / "adapter_model.safetensors").read_bytes()
    check_adapter(spec, parse_header(blob, len(blob)))

    want, got = AdapterWeights.from_dir(adapter), AdapterWeights.from_dir(directory)
    assert want.modules.keys() == got.modules.keys() and want.copies.keys() == got.copies.keys()
    for path, m in want.modules.items():
        g = got.modules[path]
        assert (m.rank, m.scaling, m.embedding) == (g.rank, g.scaling, g.embedding)
        for attr in ("lora_A", "lora_B", "magnitude", "bias", "base_weight"):
            a, b = getattr(m, attr), getattr(g, attr)
            assert (a is None and b is None) or torch.equal(a, b), (path, attr)
    assert sum(m.magnitude is not None for m in got.modules.values()) == 5
    for path, state in want.copies.items():
        assert all(torch.equal(t, got.copies[path][k]) for k, t in state.items())

    ids = torch.arange(3, 12).view(1, 9)
    outputs = []
    for weights in (want, got):
        model = load_base_model(base)
        lora = LoraModel(model, max_slots=1)
        lora.install(0, weights)
        with torch.no_grad(), lora.rows([0]):
            outputs.append(model(input_ids=ids).logits)
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], load_base_model(base)(input_ids=ids).logits.detach())

    # PEFT's own loader reads the renamed file into the same magnitudes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(load_base_model(base), str(directory))
    loaded = {n: p for n, p in pm.named_parameters() if "lora_magnitude_vector" in n}
    assert len(loaded) == 5
    for key in magnitudes:
        module = key.removesuffix(".lora_magnitude_vector.weight")
        assert torch.equal(loaded[f"{module}.lora_magnitude_vector.default.weight"], renamed[key])
