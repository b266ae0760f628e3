"""Tensors of a verified safetensors file, as views of the very bytes that were hashed (no copy).

safetensors' loader copies every tensor into a fresh allocation, and fresh memory (page faults) is a large part of
a cold load's cost on a busy host.
Here each tensor is ``torch.frombuffer`` over the buffer at the offsets that :func:`parse_header` checked (known
dtype, shape x size == byte length, contiguous, inside the file). Safetensors stores little-endian; on a big-endian
host, for data not aligned to its dtype, for a read-only buffer (``bytes`` from the store's stream) or for a dtype
torch cannot view, the safetensors loader is used instead, as before. Parsing never deserialises pickle.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from adapterfleet.store.safetensors_header import SafetensorsHeader

_FLOATS = {"F64", "F32", "F16", "BF16"}
FINITE_BLOCK = 1 << 16  # values per step of the finiteness scan
_NUMPY: dict[str, np.dtype] = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}
_VIEWABLE = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


def load_tensors(raw: bytes | bytearray, header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """name -> tensor for the file ``raw`` whose header ``parse_header`` returned. Views share ``raw``'s memory
    (it must not change afterwards: it is the verified copy). Errors come from safetensors' loader."""
    base = header.data_offset
    if (not isinstance(raw, bytearray) or sys.byteorder != "little"
            or any(t.dtype not in _VIEWABLE or (base + t.start) % _VIEWABLE[t.dtype].itemsize
                   for t in header.tensors.values())):
        return load_safetensors(bytes(raw))  # a copy, as safetensors makes one (also for unaligned data)
    # one flat view of the file per dtype, from the last aligned offset at or before the data section, and each
    # tensor as a strided view of it: one torch call a tensor instead of two (~0.4 ms of a 112-tensor cold load)
    origin = {dtype: base - base % dtype.itemsize for dtype in _VIEWABLE.values()}
    flats: dict[torch.dtype, torch.Tensor] = {}
    out = {}
    for name, t in header.tensors.items():
        dtype = _VIEWABLE[t.dtype]
        flat = flats.get(dtype)
        if flat is None:
            count = (len(raw) - origin[dtype]) // dtype.itemsize
            flat = flats[dtype] = (torch.frombuffer(raw, dtype=dtype, count=count, offset=origin[dtype]) if count
                                   else torch.empty(0, dtype=dtype))
        start = (base + t.start - origin[dtype]) // dtype.itemsize
        out[name] = (flat.as_strided(t.shape, _strides(t.shape), start) if t.nbytes
                     else torch.empty(t.shape, dtype=dtype))
    return out


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A contiguous tensor's strides (in elements) for ``shape``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def all_finite(raw: bytes | bytearray, header: SafetensorsHeader) -> bool:
    """True when every value in the file is finite, seen in one pass over its data section: possible when all its
    tensors share one float dtype (the section is then one array of it: ``parse_header`` checked that the tensors
    tile it). False means "not known" (mixed dtypes, or a NaN or Inf somewhere): check tensor by tensor, which also
    names the bad one.

    numpy, not torch: the check runs on a loader thread beside the engine, and torch would split a 1.3M-value
    reduction over its OpenMP team, whose barrier waits out any thread the scheduler has parked; on two busy cores
    that cost 19 ms per cold load where the check itself takes 0.1 ms (``benchmarks/cold_load.py``)."""
    dtypes = {t.dtype for t in header.tensors.values()}
    if len(dtypes) != 1 or not dtypes <= _FLOATS or not isinstance(raw, bytearray) or sys.byteorder != "little":
        return False
    dtype = dtypes.pop()
    size = sum(t.nbytes for t in header.tensors.values())
    if not size:
        return False
    bf16 = dtype == "BF16"  # numpy has no bfloat16: all exponent bits set is Inf or NaN
    kind = np.dtype(np.uint16) if bf16 else _NUMPY[dtype]
    data = np.frombuffer(raw, dtype=kind, count=size // kind.itemsize, offset=header.data_offset)
    # block by block into small reused temporaries: one [values] bool temporary is fresh memory, and on this VM
    # faulting in its 1.3 MB cost ~3.6 ms of a cold load where the scan itself takes ~0.2 ms
    flags = np.empty(min(FINITE_BLOCK, data.size), dtype=bool)
    bits = np.empty(flags.size, dtype=np.uint16) if bf16 else None
    for start in range(0, data.size, FINITE_BLOCK):
        block = data[start:start + FINITE_BLOCK]
        found = flags[:block.size]
        if bits is not None:  # Inf or NaN where every exponent bit is set
            if np.equal(np.bitwise_and(block, 0x7F80, out=bits[:block.size]), 0x7F80, out=found).any():
                return False
        elif not np.isfinite(block, out=found).all():
            return False
    return True
