"""adapterfleet.store.safetensors_header: header parsing from a stream prefix, cross-checked against the
safetensors library."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors
from safetensors.numpy import save as np_save

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.safetensors_header import (
    DTYPE_BITS,
    SafetensorsHeader,
    TensorInfo,
    header_bytes_needed,
    parse_header,
)


def build(header: dict | bytes, data: bytes = b"", *, declared_len: int | None = None) -> bytes:
    """A safetensors file by hand: u64 length, header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared_len is None else declared_len) + raw + data


def parse(blob: bytes, **kw) -> SafetensorsHeader:
    need = header_bytes_needed(blob)
    assert need is not None
    return parse_header(blob[:need], len(blob), **kw)


def refused(blob: bytes, **kw) -> str:
    with pytest.raises(InvalidAdapter) as e:
        parse(blob, **kw)
    assert e.value.message.startswith("adapter_model.safetensors: ")
    return e.value.message


def safetensors_refuses(blob: bytes) -> bool:
    try:
        safetensors.deserialize(blob)
    except Exception:  # noqa: BLE001 - the library raises several types; any refusal counts
        return True
    return False


def entry(dtype: str, shape: list, start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


# ---- accepted files -----------------------------------------------------------------------------------------------


def test_numpy_file_round_trip():
    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros((2,), np.float16),
        "c": np.ones((2, 3, 1), np.int64), "d": np.array([True, False]), "e": np.zeros((0, 5), np.float64),
        "f": np.arange(3, dtype=np.uint8), "g": np.arange(4, dtype=np.int8), "h": np.arange(2, dtype=np.int16),
        "i": np.arange(2, dtype=np.int32),
    }
    blob = np_save(arrays, metadata={"format": "np"})
    h = parse(blob)
    assert h.metadata == {"format": "np"}
    assert set(h.tensors) == set(arrays)
    want_dtype = {"a": "F32", "b": "F16", "c": "I64", "d": "BOOL", "e": "F64", "f": "U8", "g": "I8", "h": "I16",
                  "i": "I32"}
    for name, arr in arrays.items():
        t = h.tensors[name]
        assert (t.dtype, t.shape) == (want_dtype[name], arr.shape)
        # the offsets point at exactly this tensor's bytes
        got = blob[h.data_offset + t.start: h.data_offset + t.end]
        assert got == arr.tobytes()
    assert h.data_offset == 8 + h.header_len and h.header_len == struct.unpack("<Q", blob[:8])[0]


def test_torch_dtypes_round_trip():
    torch = pytest.importorskip("torch")
    from safetensors.torch import save as torch_save

    tensors = {"bf": torch.zeros(3, 2, dtype=torch.bfloat16), "f8": torch.zeros(4, dtype=torch.float8_e4m3fn),
               "f8b": torch.zeros(4, dtype=torch.float8_e5m2), "u16": torch.zeros(2, dtype=torch.uint16)}
    h = parse(torch_save(tensors))
    assert {n: (t.dtype, t.shape) for n, t in h.tensors.items()} == {
        "bf": ("BF16", (3, 2)), "f8": ("F8_E4M3", (4,)), "f8b": ("F8_E5M2", (4,)), "u16": ("U16", (2,))}


def test_header_only_file_and_padding():
    blob = build(b'{"__metadata__": {"format": "pt"}}    ')  # safetensors pads the header with spaces
    assert parse(blob) == SafetensorsHeader(header_len=len(blob) - 8, tensors={}, metadata={"format": "pt"})
    assert not safetensors_refuses(blob)


def test_sub_byte_dtype_sizes():
    blob = build({"x": entry("F4", [2, 3], 0, 3)}, b"\x00" * 3)
    assert parse(blob).tensors["x"] == TensorInfo("x", "F4", (2, 3), 0, 3)
    assert "3 elements of F4 do not fill whole bytes" in refused(build({"x": entry("F4", [3], 0, 2)}, b"\0\0"))


def test_dtype_list_matches_safetensors():
    """Each dtype we know is accepted by safetensors itself, with the same byte size."""
    for dtype, bits in DTYPE_BITS.items():
        n = 8  # 8 elements fill whole bytes for every bit size
        blob = build({"x": entry(dtype, [n], 0, n * bits // 8)}, b"\0" * (n * bits // 8))
        assert parse(blob).tensors["x"].nbytes == n * bits // 8
        assert not safetensors_refuses(blob), dtype


def test_incremental_prefix():
    blob = np_save({"w": np.ones((4, 4), np.float32)})
    buf = b""
    need = None
    for i in range(0, len(blob), 3):  # a stream in 3-byte chunks
        buf += blob[i:i + 3]
        need = header_bytes_needed(buf)
        if need is not None and len(buf) >= need:
            break
        if len(buf) < 8:
            assert need is None
    assert need is not None
    assert parse_header(buf, len(blob)).tensors["w"].shape == (4, 4)  # extra bytes past the header are fine


# ---- refused files ------------------------------------------------------------------------------------------------


def test_header_bytes_needed_bound():
    assert header_bytes_needed(b"\x01\x00\x00") is None
    assert header_bytes_needed(struct.pack("<Q", 10)) == 18
    assert header_bytes_needed(struct.pack("<Q", 1 << 40)) == 8 + (1 << 40)  # no bound unless asked
    with pytest.raises(InvalidAdapter, match="header declares 2048 bytes, more than the 1024-byte limit"):
        header_bytes_needed(struct.pack("<Q", 2048), max_header_bytes=1024)


def test_header_too_large():
    blob = build({"__metadata__": {"k": "v" * 100}})
    assert "more than the 64-byte limit" in refused(blob, max_header_bytes=64)


def test_header_longer_than_file():
    blob = build(b'{"a": 1}', declared_len=1000)
    with pytest.raises(InvalidAdapter, match="header declares 1000 bytes but the file is only 16 bytes"):
        parse_header(blob, len(blob))  # the whole file is a shorter prefix than the header needs
    assert safetensors_refuses(blob)


def test_file_too_short():
    with pytest.raises(InvalidAdapter, match="file is 3 bytes, too short to be safetensors"):
        parse_header(b"abc", 3)


def test_prefix_shorter_than_header_is_a_caller_error():
    blob = np_save({"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="needs at least the 8-byte length prefix"):
        parse_header(blob[:5], len(blob))
    with pytest.raises(ValueError, match=r"parse_header needs \d+ bytes of prefix, got 20"):
        parse_header(blob[:20], len(blob))


@pytest.mark.parametrize("raw, expect", [
    (b"[1, 2]", "header must be a JSON object starting with '{'"),
    (b" ", "header must be a JSON object starting with '{'"),
    (b'{"a": \xff}', "header is not valid UTF-8"),
    (b'{"a": ', "header is not valid JSON: Expecting value at char 6"),
    (b'{"a": NaN}', "header contains NaN"),
])
def test_malformed_header(raw, expect):
    blob = build(raw)
    assert expect in refused(blob)
    assert safetensors_refuses(blob)


def test_duplicate_tensor_name_refused():
    raw = (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
           b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}')
    assert "tensor or key 'x' appears twice" in refused(build(raw, b"\0" * 8))


@pytest.mark.parametrize("meta", [["a"], {"k": 1}, "format"])
def test_metadata_must_be_str_to_str(meta):
    assert "__metadata__ must be an object of string keys to string values" in refused(build({"__metadata__": meta}))


@pytest.mark.parametrize("tensor, expect", [
    ("not an object", "tensor 'w': entry must be an object"),
    ({"dtype": "F32", "shape": [1]}, "tensor 'w': missing data_offsets"),
    (entry("F128", [1], 0, 16), "tensor 'w' has unknown dtype 'F128'"),
    (entry("F32", [-1], 0, 4), "tensor 'w': shape must be a list of non-negative integers, got [-1]"),
    (entry("F32", [1.0], 0, 4), "tensor 'w': shape must be a list of non-negative integers"),
    (entry("F32", [True], 0, 4), "tensor 'w': shape must be a list of non-negative integers"),
    (entry("F32", 4, 0, 4), "tensor 'w': shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "data_offsets must be [start, end]"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "data_offsets must be [start, end]"),
    (entry("F32", [2, 3], 0, 16), "tensor 'w': shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 16] span 16"),
])
def test_bad_tensor_entry(tensor, expect):
    blob = build({"w": tensor}, b"\0" * 16)
    assert expect in refused(blob)
    assert safetensors_refuses(blob)


def test_empty_tensor_name():
    assert "a tensor has an empty name" in refused(build({"": entry("F32", [1], 0, 4)}, b"\0" * 4))


@pytest.mark.parametrize("tensors, data_len, expect", [
    ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 12, "tensor 'b' [4, 12) overlaps tensor 'a'"),
    ({"a": entry("F32", [1], 4, 8)}, 8, "4 unused bytes at the start of the data section, before tensor 'a'"),
    ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, 12, "4 unused bytes after tensor 'a'"),
    ({"a": entry("F32", [1], 0, 4)}, 10, "6 bytes after the last tensor are not described by the header"),
    ({"a": entry("F32", [4], 0, 16)}, 8, "tensor 'a' ends at byte 16 of the data section, which is only 8 bytes"),
])
def test_offsets_must_tile_the_data_section(tensors, data_len, expect):
    blob = build(tensors, b"\0" * data_len)
    assert expect in refused(blob)
    assert safetensors_refuses(blob)  # safetensors itself refuses the same files


def test_zero_size_tensors_tile():
    blob = build({"z": entry("F32", [0, 3], 0, 0), "a": entry("F32", [1], 0, 4), "y": entry("F32", [0], 4, 4)},
                 b"\0" * 4)
    assert set(parse(blob).tensors) == {"z", "a", "y"}
    assert not safetensors_refuses(blob)
