"""The wire between the store and its validator processes: length-prefixed frames over a child's stdin and stdout.
Nothing is pickled: a frame is JSON plus raw bytes.

    frame = u32 big-endian meta length | meta: a UTF-8 JSON object | its parts' raw bytes, back to back
    meta  = {"id": n, "parts": [length, ...], ...}

A request names its step ("op") and carries the bytes to validate as parts (a config, a safetensors header). An
answer has no parts and carries either the facts the store needs afterwards ({"facts": {...}}) or a typed error
({"error": a class name of common/errors.py, or "internal", "message": ...}).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

from adapterfleet.common.errors import AdapterFleetError

MAX_META_BYTES = 1 << 20  # a meta object (facts, an error message) is tiny; more is a broken peer
INTERNAL = "internal"     # an unexpected exception in the child: INTERNAL in the store, as in a thread
STEPS = {"config": 1, "header": 1, "adapter": 3}  # budgeted steps one request may run (adapter: both parsed again)
_LEN = struct.Struct(">I")

Frame = tuple[dict[str, Any], list[bytes]]


class WireError(Exception):
    """The peer sent something that is not a frame (the child is broken or is not ours)."""


def _kinds(cls: type[AdapterFleetError]) -> list[type[AdapterFleetError]]:
    return [cls] + [k for sub in cls.__subclasses__() for k in _kinds(sub)]


# errors that cross by class name: those built from a message alone (RateLimited needs more, and no step raises it)
ERROR_KINDS: dict[str, type[AdapterFleetError]] = {
    c.__name__: c for c in _kinds(AdapterFleetError) if c.__init__ is AdapterFleetError.__init__}


def encode(meta: dict[str, Any], parts: Sequence[bytes] = ()) -> list[bytes]:
    """The frame's buffers, to be written in order (the parts are not copied)."""
    raw = json.dumps({**meta, "parts": [len(p) for p in parts]}, separators=(",", ":")).encode()
    if len(raw) > MAX_META_BYTES:
        raise WireError(f"a frame's meta is {len(raw)} bytes, more than {MAX_META_BYTES}")
    return [_LEN.pack(len(raw)), raw, *parts]


def _meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise WireError(f"a frame's meta is not JSON: {e}") from None
    parts = meta.get("parts") if isinstance(meta, dict) else None
    if not isinstance(parts, list) or not all(isinstance(n, int) and n >= 0 for n in parts):
        raise WireError("a frame's meta is not an object with a list of part lengths")
    return meta


def _length(prefix: bytes) -> int:
    (n,) = _LEN.unpack(prefix)
    if n > MAX_META_BYTES:
        raise WireError(f"a frame's meta would be {n} bytes, more than {MAX_META_BYTES}")
    return n


def read_frame_sync(stream: BinaryIO) -> Frame | None:
    """The next frame from a blocking stream; None at a clean end (EOF between frames)."""
    prefix = stream.read(_LEN.size)
    if not prefix:
        return None

    def exactly(n: int) -> bytes:
        data = stream.read(n) if n else b""
        if len(data) != n:
            raise WireError(f"the stream ended inside a frame ({len(data)} of {n} bytes)")
        return data

    if len(prefix) != _LEN.size:
        raise WireError("the stream ended inside a frame's length")
    meta = _meta(exactly(_length(prefix)))
    return meta, [exactly(n) for n in meta["parts"]]


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame; asyncio.IncompleteReadError if the stream ends first."""
    meta = _meta(await reader.readexactly(_length(await reader.readexactly(_LEN.size))))
    return meta, [await reader.readexactly(n) for n in meta["parts"]]


def error_meta(exc: Exception) -> dict[str, Any]:
    """An exception as an answer: typed if it is one of ours, else "internal" with its type and message."""
    if isinstance(exc, AdapterFleetError) and ERROR_KINDS.get(type(exc).__name__) is type(exc):
        return {"error": type(exc).__name__, "message": exc.message}
    return {"error": INTERNAL, "message": f"{type(exc).__name__}: {exc}"[:4096]}


def raise_if_error(meta: dict[str, Any]) -> None:
    """Raise the error an answer carries, as the same class; an "internal" one as RuntimeError (INTERNAL)."""
    if "error" not in meta:
        return
    kind, message = meta["error"], str(meta.get("message", ""))
    cls = ERROR_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RuntimeError(f"the validator process failed: {message}")
    raise cls(message)
