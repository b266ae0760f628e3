"""safetensors_header.parse_header on arbitrary bytes and on near-valid headers: it returns a header or raises
InvalidAdapter (never TypeError, RecursionError, ...), in bounded time; and whatever it accepts, the safetensors
library loads too."""

from __future__ import annotations

import json
import struct

import safetensors
from hypothesis import event, given
from hypothesis import strategies as st

from adapterfleet.store.safetensors_header import DTYPE_BITS, SafetensorsHeader, parse_header
from tests.fuzz.typed import FUZZ, typed

MAX_HEADER = 1 << 20

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
dims = st.lists(st.integers(0, 5), max_size=3)


@st.composite
def tensor_entries(draw) -> tuple[dict, int]:
    """Tensors laid end to end (a valid layout), then some fields swapped for junk or nudged off by a little."""
    tensors, pos = {}, 0
    names = draw(st.lists(st.text(min_size=1, max_size=12), max_size=4, unique=True))
    if draw(st.integers(0, 19)) == 0:
        names.append("")  # safetensors refuses an empty tensor name
    for name in dict.fromkeys(names):
        dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
        shape = draw(dims)
        numel = 1
        for d in shape:
            numel *= d
        if numel * DTYPE_BITS[dtype] % 8:  # F4/F6 fill whole bytes only for some counts
            dtype = "F32"
        size = numel * DTYPE_BITS[dtype] // 8
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + size]}
        pos += size
        mutate = draw(st.integers(0, 3)) == 0
        for field in draw(st.lists(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), min_size=1,
                                   max_size=2)) if mutate else ():
            entry[field] = draw(st.one_of(
                junk,
                st.sampled_from([["F32"], {"F32": 1}, [[1]], [-1], [2**64], [2**63, 2**63], [1.0], [True], "F32",
                                 [0], [0, 0, 0], [2**64 - 1, 2**64 - 1]]),
                st.lists(st.integers(-2, 2**64 + 1), max_size=3),
            ))
        if draw(st.integers(0, 19)) == 0:
            del entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
        tensors[name] = entry
    if draw(st.booleans()):
        tensors["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5))
                                       if draw(st.integers(0, 3)) else junk)
    return tensors, pos + draw(st.sampled_from([0] * 8 + [1, -1, 4]))


@st.composite
def near_valid_files(draw) -> bytes:
    tensors, data_len = draw(tensor_entries())
    raw = json.dumps(tensors, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    depth = draw(st.sampled_from([0] * 20 + [1, 63, 64, 65, 1000, 5000]))
    if depth:  # nest a value deep inside the header object
        raw = b'{"w": ' + b"[" * depth + b"]" * depth + b"," + raw[1:] if len(raw) > 2 else (
            b'{"w": ' + b"[" * depth + b"]" * depth + b"}")
    if draw(st.integers(0, 9)) == 0:  # damage a byte, spread over the header (hypothesis favours small ints)
        at = draw(st.integers(0, len(raw) - 1)) * 7919 % len(raw)
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    declared = len(raw) + draw(st.sampled_from([0] * 12 + [1, -1, 2**40]))
    data = b"\0" * max(data_len, 0)
    return struct.pack("<Q", max(declared, 0)) + raw + data


def parse(blob: bytes) -> SafetensorsHeader | Exception:
    # the whole file is a valid prefix; a shorter one is a caller error (ValueError), not a property of the input
    out = typed(parse_header, blob, len(blob), max_header_bytes=MAX_HEADER)
    event("accepted" if isinstance(out, SafetensorsHeader) else "refused")
    return out


def loads_in_safetensors(blob: bytes) -> bool:
    try:
        safetensors.deserialize(blob)
        return True
    except Exception:  # noqa: BLE001 - any refusal
        return False


@FUZZ
@given(st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=200).map(lambda b: struct.pack("<Q", len(b)) + b),
    st.binary(max_size=200).map(lambda b: struct.pack("<Q", len(b) + 1) + b"{" + b),
))
def test_arbitrary_bytes(blob):
    out = parse(blob)
    if isinstance(out, SafetensorsHeader):
        assert loads_in_safetensors(blob)


@FUZZ
@given(near_valid_files())
def test_near_valid_headers(blob):
    out = parse(blob)
    if isinstance(out, SafetensorsHeader):
        assert loads_in_safetensors(blob), blob[:300]
        assert sum(t.nbytes for t in out.tensors.values()) == len(blob) - out.data_offset
