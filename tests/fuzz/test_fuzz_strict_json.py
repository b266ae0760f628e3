"""strict_json.strict_loads on arbitrary text and on near-valid JSON: it returns what json.loads returns, or refuses
with JSONDecodeError or the caller's typed error, never RecursionError or another exception, in bounded time."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.strict_json import MAX_DEPTH, nesting_depth, strict_loads
from tests.fuzz.typed import FUZZ, typed

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TOKENS = ['"', "\\", "[", "]", "{", "}", ",", ":", "NaN", "-Infinity", "1e400", "\\ud800", "\\udc00", "\\ud83d\\ude00",
          "9" * 5000, " ", "\n", "\x00", "\u2028", "é"]


@st.composite
def near_valid_json(draw) -> str:
    text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    depth = draw(st.sampled_from([0, 0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 999, 1000, 3000]))
    opener = draw(st.sampled_from(["[", '{"k":']))
    text = opener * depth + text + ("]" if opener == "[" else "}") * depth
    for _ in range(draw(st.integers(0, 3))):  # splice in tokens that parsers get wrong
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
    if draw(st.booleans()):  # a key twice in one object
        text = '{"a": 1, "a": ' + text + "}"
    return text


def check(text: str) -> None:
    def dup(key: str) -> InvalidAdapter:
        return InvalidAdapter(f"duplicate {key[:40]!r}")

    def const(name: str) -> InvalidAdapter:
        return InvalidAdapter(f"constant {name}")

    def parse():
        try:
            return strict_loads(text, on_duplicate=dup, on_constant=const)
        except json.JSONDecodeError as e:  # what callers turn into InvalidAdapter
            raise InvalidAdapter(f"invalid JSON: {e.msg[:200]} at char {e.pos}") from None

    out = typed(parse)
    if not isinstance(out, InvalidAdapter):
        assert nesting_depth(text) <= MAX_DEPTH
        assert out == json.loads(text)  # nothing strict lets through is read differently


@FUZZ
@given(st.text())
def test_arbitrary_text(text):
    check(text)


@FUZZ
@given(near_valid_json())
def test_near_valid_json(text):
    check(text)
