"""JSON parsing that refuses what json.loads lets through: duplicate keys, NaN/Infinity, deep nesting, huge
integers and lone UTF-16 surrogates (serde_json, which safetensors uses, also limits nesting and refuses lone
surrogates).

Every refusal other than the two hooks is a :class:`json.JSONDecodeError` (a ``ValueError``), so a caller that
already turns malformed JSON into its own typed error handles them all in one place. Work is bounded: nesting is
measured by a linear scan *before* Python's recursive parser runs (1000 nested brackets would otherwise raise
RecursionError, and deeper ones can exhaust the C stack).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64          # arrays and objects inside one another; real configs and headers use 3 or fewer
MAX_INT_DIGITS = 1000   # Python refuses int() of more than 4300 digits with a bare ValueError

_ESCAPE = re.compile(r"\\.", re.S)  # every backslash escape, tokenised left to right as JSON does
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ASCII_NOT_BRACKET = str.maketrans("", "", "".join(chr(c) for c in range(128) if chr(c) not in "[]{}"))
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}.__getitem__
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _unescaped(text: str) -> str:
    """``text`` with every escape replaced by two harmless characters: same length, and quotes now alternate
    between opening and closing a string."""
    return _ESCAPE.sub("__", text)


def _scan(flat: str, depth: int, in_string: bool) -> tuple[int, int]:
    """(deepest level, level at the end) of a stretch of escape-free JSON entered at level ``depth``, inside a
    string or not. All in C but the running sum; an unterminated string counts as a string."""
    bare = "".join(flat.split('"')[1 if in_string else 0::2]).translate(_ASCII_NOT_BRACKET)
    if not bare.isascii():  # non-ASCII outside strings is invalid JSON, but count what brackets there are
        bare = _NOT_BRACKET.sub("", bare)
    deepest = max(accumulate(map(_STEP, bare), initial=depth))
    return deepest, depth + bare.count("[") + bare.count("{") - bare.count("]") - bare.count("}")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in ``text``, brackets inside strings ignored. Linear time."""
    return _scan(_unescaped(text), 0, False)[0]


def _deep_position(text: str, limit: int) -> int:
    """Index of the bracket that opens level ``limit + 1`` (there must be one): halving with the scan state carried
    across each cut, so about two linear passes in all."""
    flat = _unescaped(text)
    lo, hi, depth, in_string = 0, len(flat), 0, False
    while hi - lo > 1:  # invariant: the bracket lies in flat[lo:hi], entered at (depth, in_string)
        mid = (lo + hi) // 2
        deepest, end = _scan(flat[lo:mid], depth, in_string)
        if deepest > limit:
            hi = mid
        else:
            depth, in_string = end, in_string != (flat.count('"', lo, mid) % 2 == 1)
            lo = mid
    return lo


def _check_depth(text: str, max_depth: int) -> None:
    if nesting_depth(text) > max_depth:
        raise json.JSONDecodeError(f"arrays and objects are nested more than {max_depth} levels deep",
                                   text, _deep_position(text, max_depth))


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def strict_loads(text: str, *, on_duplicate: Callable[[str], Exception],
                 on_constant: Callable[[str], Exception], max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``; a key twice in one object raises ``on_duplicate(key)``, NaN/Infinity ``on_constant(name)``.
    Nesting deeper than ``max_depth``, an integer of more than MAX_INT_DIGITS digits or a lone surrogate escape
    raise :class:`json.JSONDecodeError` saying so."""
    _check_depth(text, max_depth)

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in items:
            if k in out:
                raise on_duplicate(k)
            out[k] = v
        return out

    def constant(name: str) -> Any:
        raise on_constant(name)

    def integer(digits: str) -> int:
        if len(digits) > MAX_INT_DIGITS:
            raise json.JSONDecodeError(f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS})",
                                       text, max(text.find(digits), 0))
        return int(digits)

    doc = json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_int=integer)
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(doc):
        m = _SURROGATE_ESCAPE.search(text)
        raise json.JSONDecodeError("a \\u escape is half of a UTF-16 surrogate pair, which is not valid Unicode",
                                   text, m.start() if m else 0)
    return doc
