"""Parse and sanity-check a safetensors header from the first bytes of a stream, without the safetensors library.

Layout: ``[u64 little-endian header_len][header_len bytes of UTF-8 JSON][data section]``. The checks mirror
safetensors' own ``Metadata::validate`` (known dtypes, byte sizes, offsets that tile the data section exactly), so
anything accepted here also loads with ``safetensors.safe_open``, and the store can refuse a bad file after reading
only its header.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.strict_json import strict_loads

_WHERE = "adapter_model.safetensors"
_FIX = "re-save the adapter with PeftModel.save_pretrained() or safetensors.torch.save_file()"

# Element size in *bits*, as in safetensors' Dtype::bitsize (F4 and F6 pack below a byte).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    header_len: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_offset(self) -> int:
        return 8 + self.header_len


_U64_MAX = 2**64 - 1  # safetensors keeps sizes, dims and offsets in usize and refuses what overflows it


def _fail(msg: str) -> InvalidAdapter:
    return InvalidAdapter(f"{_WHERE}: {msg}")


def _show(v: Any, limit: int = 80) -> str:
    """A short ``repr`` for messages: never echo a whole hostile value."""
    s = repr(v)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"


def header_bytes_needed(prefix: bytes, *, max_header_bytes: int | None = None) -> int | None:
    """None until 8 bytes are available; then ``8 + header_len``. With ``max_header_bytes``, a declared length
    above it raises at once, so a streaming caller never buffers more than the bound."""
    if len(prefix) < 8:
        return None
    (n,) = struct.unpack("<Q", prefix[:8])
    if max_header_bytes is not None and n > max_header_bytes:
        raise _fail(
            f"header declares {n} bytes, more than the {max_header_bytes}-byte limit; this is not a safetensors "
            f"file, or its first 8 bytes are damaged: {_FIX}"
        )
    return 8 + n


def _u64s(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _U64_MAX for x in v)


def _tensor(name: str, entry: Any) -> TensorInfo:
    what = f"tensor {_show(name)}"
    if not isinstance(entry, dict):
        raise _fail(f"{what}: entry must be an object with dtype, shape, data_offsets; {_FIX}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise _fail(f"{what}: missing {', '.join(missing)}; {_FIX}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise _fail(f"{what}: dtype must be a string such as \"F32\", got {type(dtype).__name__} {_show(dtype)}; "
                    f"{_FIX}")
    if dtype not in DTYPE_BITS:
        raise _fail(
            f"{what} has unknown dtype {_show(dtype)}; known dtypes: {', '.join(DTYPE_BITS)}. "
            "Cast it to F32, F16 or BF16 before saving"
        )
    if not _u64s(shape):
        raise _fail(f"{what}: shape must be a list of non-negative integers, got {_show(shape)}; {_FIX}")
    if not _u64s(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise _fail(f"{what}: data_offsets must be [start, end] with 0 <= start <= end, got {_show(offsets)}")
    numel = 1
    for dim in shape:  # in order, refusing overflow as safetensors does (so the product stays small)
        numel *= dim
        if numel > _U64_MAX:
            raise _fail(f"{what}: shape {_show(shape)} has more than 2**64 elements; {_FIX}")
    bits = numel * DTYPE_BITS[dtype]
    if bits > _U64_MAX:
        raise _fail(f"{what}: shape {_show(shape)} of {dtype} is more than 2**64 bits; {_FIX}")
    if bits % 8:
        raise _fail(f"{what}: {numel} elements of {dtype} do not fill whole bytes; {_FIX}")
    start, end = offsets
    if end - start != bits // 8:
        raise _fail(
            f"{what}: shape {_show(shape)} of {dtype} needs {bits // 8} bytes but data_offsets {offsets} span "
            f"{end - start}; the header does not describe the data: {_FIX}"
        )
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)


def parse_header(prefix: bytes, file_size: int, *, max_header_bytes: int = 16 << 20) -> SafetensorsHeader:
    """Parse the header from ``prefix`` (at least ``header_bytes_needed(prefix)`` bytes of a file that will be
    ``file_size`` bytes long in all). Raises :class:`InvalidAdapter`."""
    if file_size < 8:
        raise _fail(f"file is {file_size} bytes, too short to be safetensors (8-byte length prefix); {_FIX}")
    needed = header_bytes_needed(prefix, max_header_bytes=max_header_bytes)
    if needed is None:
        raise ValueError("parse_header needs at least the 8-byte length prefix; check header_bytes_needed() first")
    header_len = needed - 8
    if needed > file_size:
        raise _fail(
            f"header declares {header_len} bytes but the file is only {file_size} bytes; the file is truncated "
            f"or not safetensors: {_FIX}"
        )
    if len(prefix) < needed:
        raise ValueError(f"parse_header needs {needed} bytes of prefix, got {len(prefix)}")
    raw = prefix[8:needed]
    if header_len < 2 or raw[:1] != b"{":
        raise _fail(f"header must be a JSON object starting with '{{'; {_FIX}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(f"header is not valid UTF-8 ({e}); {_FIX}") from None
    try:
        doc = strict_loads(
            text, on_duplicate=lambda k: _fail(f"tensor or key {_show(k)} appears twice in the header; {_FIX}"),
            on_constant=lambda name: _fail(f"header contains {name}, which is not valid JSON; {_FIX}"))
    except json.JSONDecodeError as e:  # also nesting deeper than strict_json.MAX_DEPTH and oversized integers
        raise _fail(f"header is not valid JSON: {e.msg} at char {e.pos}; {_FIX}") from None
    if not isinstance(doc, dict):
        raise _fail(f"header must be a JSON object; {_FIX}")

    metadata = doc.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail("__metadata__ must be an object of string keys to string values, e.g. {\"format\": \"pt\"}")

    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        if not name:
            raise _fail(f"a tensor has an empty name; {_FIX}")
        tensors[name] = _tensor(name, entry)

    # Tensors must tile the data section exactly: sorted by offset, each starts where the last ended (no holes, no
    # overlaps), and the last ends at the end of the file (safetensors refuses anything else too).
    data_len = file_size - needed
    pos, prev = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start < pos:
            raise _fail(f"tensor {_show(t.name)} [{t.start}, {t.end}) overlaps tensor {_show(prev)}, which ends at "
                        f"{pos}; {_FIX}")
        if t.start > pos:
            after = f"after tensor {_show(prev)}" if prev else "at the start of the data section"
            raise _fail(f"{t.start - pos} unused bytes {after}, before tensor {_show(t.name)}; {_FIX}")
        if t.end > data_len:
            raise _fail(
                f"tensor {_show(t.name)} ends at byte {t.end} of the data section, which is only {data_len} bytes; "
                f"the file is truncated: {_FIX}"
            )
        pos, prev = t.end, t.name
    if pos != data_len:
        raise _fail(
            f"{data_len - pos} bytes after the last tensor are not described by the header (data section is "
            f"{data_len} bytes, tensors cover {pos}); {_FIX}"
        )
    return SafetensorsHeader(header_len=header_len, tensors=tensors, metadata=metadata)
