"""adapter_config.parse_adapter_config on arbitrary bytes and on near-valid configs: it returns a LoraSpec or raises
InvalidAdapter, never another exception, in bounded time.

Pattern strings (target_modules as a regex, rank_pattern keys, ...) come from an alphabet without '{' and '}' and
are at most 12 characters, so that the examples explore the config rather than regex compile times; the two
patterns that break re.compile itself (a huge repetition count, thousands of nested groups) are pinned below.
Matching (catastrophic backtracking) is not exercised here.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.adapter_config import LoraSpec, parse_adapter_config
from tests.fuzz.typed import FUZZ, typed

pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # re, on random patterns

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head", "embed_tokens", "layers", "h"]
patterns = st.text(alphabet="abcqkvo_proj.*+?|()[]^$\\-0123456789", max_size=12)
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
FIELDS = {
    "peft_type": st.sampled_from(["LORA", "IA3", "lora", ""]),
    "r": st.integers(-2, 300),
    "lora_alpha": st.integers(-2, 64) | st.floats(),
    "target_modules": st.lists(st.sampled_from(MODULES), max_size=4) | patterns | st.just("all-linear"),
    "exclude_modules": st.none() | st.lists(st.sampled_from(MODULES), max_size=3) | patterns,
    "modules_to_save": st.none() | st.lists(st.sampled_from(MODULES) | patterns, max_size=3),
    "rank_pattern": st.dictionaries(patterns, st.integers(-1, 300), max_size=3),
    "alpha_pattern": st.dictionaries(patterns, st.integers(-1, 64) | st.floats(), max_size=3),
    "bias": st.sampled_from(["none", "all", "lora_only", "some", None]),
    "layers_to_transform": st.none() | st.integers(-1, 40) | st.lists(st.integers(-1, 40), max_size=4),
    "layers_pattern": st.none() | st.sampled_from(["layers", "h", ""]) | st.lists(patterns, max_size=2),
    "use_rslora": st.booleans() | st.none(), "use_dora": st.booleans() | st.none(),
    "fan_in_fan_out": st.booleans() | st.none(),
    "init_lora_weights": st.booleans() | st.sampled_from(["gaussian", "pissa", "pissa_niter_4", "olora", "eva"]),
    "base_model_name_or_path": st.none() | st.text(max_size=20),
    "task_type": st.none() | st.sampled_from(["CAUSAL_LM", "SEQ_CLS"]),
    "layer_replication": st.none() | st.just([[0, 2]]), "lora_bias": st.booleans(),
    "use_qalora": st.booleans(), "trainable_token_indices": st.none() | st.just([1, 2]),
}


@st.composite
def near_valid_configs(draw) -> bytes:
    d = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        d[key] = draw(FIELDS[key] | junk) if draw(st.integers(0, 4)) == 0 else draw(FIELDS[key])
    for key in draw(st.lists(st.sampled_from(sorted(d)), max_size=1)):
        del d[key]
    text = json.dumps(d, allow_nan=True)
    depth = draw(st.sampled_from([0] * 12 + [1, 64, 65, 1000, 3000]))
    if depth:  # an extra field nested deep
        text = text[:-1] + (", " if len(d) else "") + '"deep": ' + "[" * depth + "]" * depth + "}"
    if draw(st.integers(0, 9)) == 0:  # a key twice
        text = text[:-1] + (", " if len(d) else "") + '"r": 8}'
    return text.encode("utf-8", "surrogatepass")


def check(data: bytes) -> None:
    out = typed(parse_adapter_config, data, max_rank=64, short=False)
    assert isinstance(out, LoraSpec | InvalidAdapter)
    event("accepted" if isinstance(out, LoraSpec) else "refused")


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes(data):
    check(data)


@FUZZ
@given(near_valid_configs())
def test_near_valid_configs(data):
    check(data)


@pytest.mark.parametrize("pattern", ["q{4294967296}", "(" * 3000 + "q" + ")" * 3000])
def test_patterns_that_break_re_compile_are_refused(pattern):
    data = json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": pattern}).encode()
    assert isinstance(typed(parse_adapter_config, data, short=False), InvalidAdapter)
