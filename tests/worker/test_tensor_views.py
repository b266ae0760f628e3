"""Tensors of a verified safetensors file come out as views of the very bytes that were hashed, and read exactly
what safetensors' own loader reads: any mix of dtypes, empty and scalar tensors, and a data section that does not
start on an 8-byte boundary (a file safetensors itself would pad, but one a client may send)."""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load, save

from adapterfleet.store.safetensors_header import header_bytes_needed, parse_header
from adapterfleet.worker.tensor_bytes import load_tensors

MIXED = {
    "a": torch.randn(4, 3),
    "b": torch.randn(5).to(torch.float16),
    "c": torch.randn(2, 3).to(torch.bfloat16),
    "d": torch.arange(6, dtype=torch.int64).view(3, 2),
    "e": torch.randn(0, 4),
    "f": torch.tensor(2.5, dtype=torch.float64),
    "g": torch.randn(3, 1, 2),
}


def _views(raw: bytearray) -> dict[str, torch.Tensor]:
    return load_tensors(raw, parse_header(bytes(raw[:header_bytes_needed(raw[:8])]), len(raw)))


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t), name


def _inside(t: torch.Tensor, raw: bytearray) -> bool:
    start = torch.frombuffer(raw, dtype=torch.uint8).data_ptr()
    return t.numel() == 0 or start <= t.data_ptr() < start + len(raw)


def test_every_dtype_reads_as_safetensors_does_and_shares_the_bytes():
    raw = bytearray(save(MIXED))
    got = _views(raw)
    _same(got, load(bytes(raw)))
    assert all(_inside(t, raw) for t in got.values())
    before = got["g"].clone()
    at = got["g"].data_ptr() - torch.frombuffer(raw, dtype=torch.uint8).data_ptr()
    raw[at + 3] ^= 0x40  # the views are the bytes, not a copy: a change shows (the caller never changes verified ones)
    assert not torch.equal(got["g"], before)
    assert all(t.is_contiguous() for t in got.values())


def test_a_data_section_off_the_8_byte_grid_still_reads_right():
    """A hand-made file whose header is 3 bytes longer than safetensors would write it: float32 data then starts
    off its 4-byte grid, and every tensor still reads what safetensors reads (copied then, not viewed)."""
    body = save({"w": torch.randn(3, 2), "h": torch.randn(4).to(torch.float16)})
    n = struct.unpack("<Q", body[:8])[0]
    header = json.loads(body[8:8 + n])
    odd = json.dumps(header).encode() + b"   "  # 3 spaces of padding: the data section moves by a few bytes
    raw = bytearray(struct.pack("<Q", len(odd)) + odd + body[8 + n:])
    _same(_views(raw), load(bytes(raw)))


def test_a_data_section_on_a_2_byte_grid_views_half_floats_in_place():
    """Aligned for float16 but not for float32: each tensor is viewed where its dtype allows it."""
    body = save({"h": torch.randn(6).to(torch.float16), "b": torch.randn(2).to(torch.bfloat16)})
    n = struct.unpack("<Q", body[:8])[0]
    header = json.loads(body[8:8 + n])
    for pad in range(0, 8, 2):
        odd = json.dumps(header).encode() + b" " * pad
        raw = bytearray(struct.pack("<Q", len(odd)) + odd + body[8 + n:])
        got = _views(raw)
        _same(got, load(bytes(raw)))
        assert all(_inside(t, raw) for t in got.values())
