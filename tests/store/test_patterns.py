"""adapter_config's patterns matched in bounded time: catastrophic backtracking refused (or matched at once), a CPU
budget over all matching, the same answers as peft's re, and re as the fallback when `regex` is not installed."""

from __future__ import annotations

import json
import pickle
import re

import pytest

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store import patterns
from adapterfleet.store.adapter_config import LoraSpec, parse_adapter_config
from adapterfleet.store.patterns import MAX_PATTERN_CHARS, Pattern, cpu_budget


def spec(**fields) -> LoraSpec:
    return parse_adapter_config(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **fields}).encode())


@pytest.fixture(params=["regex", "re"])
def engine(request, monkeypatch):
    """Every answer is the same with the bounded engine and with the fallback (the SDK's base install)."""
    if request.param == "re":
        monkeypatch.setattr(patterns, "_engine", False)
    else:
        assert patterns.bounded(), "the store's extra installs `regex`"
    return request.param


MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.12.mlp.down_proj",
           "model.embed_tokens", "lm_head", "vision_tower.blocks.0.attn.q_proj", "transformer.h.3.attn.c_attn"]
CASES = [  # (target_modules, rank_pattern): what PEFT users write
    (r".*\.(q_proj|v_proj)", {}),
    (r"^(?!.*vision).*\.(q_proj|k_proj|v_proj)$", {}),
    (r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj", {r"layers\.1\..*": 8, "down_proj": 2}),
    (r".*(c_attn|c_proj)", {"h.3.attn.c_attn": 16}),
]


@pytest.mark.parametrize(("target", "ranks"), CASES)
def test_answers_equal_peft_re_semantics(engine, target, ranks):
    s = spec(target_modules=target, rank_pattern=ranks)
    for m in MODULES:
        assert s.targets(m) == (re.fullmatch(target, m) is not None), m
        first = next((k for k in ranks if re.match(rf"(.*\.)?({k})$", m)), None)
        assert s.rank_for(m) == (ranks[first] if first else 4), m


def test_catastrophic_backtracking_is_refused_naming_the_pattern():
    s = spec(target_modules="(a|aa)+b")
    with pytest.raises(InvalidAdapter) as err:
        s.targets("a" * 60)  # re: about 1.5e12 steps
    assert "target_modules '(a|aa)+b'" in err.value.message and "backtracks catastrophically" in err.value.message


def test_the_reported_pattern_is_answered_at_once():
    """'(a+)+b' against 28 a's stalled the store 13.7 s under re; the bounded engine answers (no match) at once."""
    assert spec(target_modules="(a+)+b").targets("a" * 28) is False


@pytest.mark.parametrize("field", ["exclude_modules", "rank_pattern", "modules_to_save", "layers_pattern"])
def test_every_user_pattern_is_bounded(field):
    bad = "(a|aa)+b"
    fields = {
        "exclude_modules": {"target_modules": ["q"], "exclude_modules": bad},
        "rank_pattern": {"target_modules": ["q"], "rank_pattern": {bad: 2}},
        "modules_to_save": {"target_modules": ["q"], "modules_to_save": [bad]},
        "layers_pattern": {"target_modules": ["q"], "layers_to_transform": [0], "layers_pattern": bad},
    }[field]
    s = spec(**fields)
    with pytest.raises(InvalidAdapter, match="backtracks catastrophically"):
        s.targets("a" * 60 + ".q") if field != "rank_pattern" else s.rank_for("a" * 60)


def test_a_cpu_budget_bounds_all_matching():
    s = spec(target_modules=["q"], rank_pattern={f"nomatch_{i}": 2 for i in range(300)})
    modules = [f"m.{i}.q" for i in range(2000)]
    assert all(s.rank_for(m) == 4 for m in modules[:10])  # fine without a budget
    with cpu_budget(0.01), pytest.raises(InvalidAdapter) as err:
        for m in modules:
            s.rank_for(m)
    assert "more than 0.01 s of CPU" in err.value.message


def test_compiling_is_bounded_too():
    with pytest.raises(InvalidAdapter, match="characters long"):
        spec(target_modules="a" * (MAX_PATTERN_CHARS + 1))
    with cpu_budget(0.0), pytest.raises(InvalidAdapter, match="of CPU"):
        spec(target_modules=["q"], modules_to_save=[f"keep_{i}" for i in range(50)])


def test_invalid_patterns_still_say_so(engine):
    with pytest.raises(InvalidAdapter, match="target_modules '\\(' is not a valid regular expression"):
        spec(target_modules="(")
    with pytest.raises(InvalidAdapter, match="is not a valid regular expression"):
        Pattern("(" * 3000 + ")" * 3000, "target_modules")


def test_a_spec_pickles_without_its_compiled_patterns():
    s = spec(target_modules=r".*\.q_proj")
    assert s.targets("a.q_proj")
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and copy.targets("a.q_proj") and not copy.targets("a.k_proj")
