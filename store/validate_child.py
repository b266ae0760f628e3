"""A validator process: ``python -m adapterfleet.store.validate_child LIMITS_JSON``, started by the store
(validate_pool.py) so that parsing and checking pushed adapters never holds the store's GIL.

It answers requests from stdin on stdout (validate_wire.py), one at a time, until stdin ends:

    op "config"   parts [adapter_config.json]       facts {"r", "base_model_name_or_path"}
    op "header"   parts [safetensors header]        facts {"tensors"}           ("size": the file's size)
    op "adapter"  parts [config, header]            facts {}                    ("config"/"header": their tokens)

Each parsed config or header is kept under the token the store gave it (the last few only), so the final check of a
push does not parse them again when it lands on the same process; on another one it parses the bytes it was sent.
Every step runs under its CPU budget (validate_steps.py); should one ever run past it inside a single C call, the
kernel (RLIMIT_CPU, set before each request) kills the process, and the store refuses the push and starts another.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import signal
import sys
from collections import OrderedDict
from typing import Any

from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.store.config import Limits
from adapterfleet.store.safetensors_header import SafetensorsHeader
from adapterfleet.store.validate_steps import check_tensors, parse_config, parse_tensors
from adapterfleet.store.validate_wire import STEPS, encode, error_meta, read_frame_sync

KEEP = 4            # parsed configs and headers kept (a 2 MiB header parses to ~20 MB of objects)
CPU_SLACK_S = 2.0   # CPU beyond the steps' budgets before the kernel stops the process (parsing is not budgeted)


def limits_from_arg(arg: str) -> Limits:
    fields = {f.name for f in dataclasses.fields(Limits)}
    return Limits(**{k: v for k, v in json.loads(arg).items() if k in fields})


class _Kept:
    """The last KEEP parsed values, by token."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, token: Any, kind: type) -> Any:
        value = self._items.get(token) if isinstance(token, str) else None
        if isinstance(value, kind):
            self._items.move_to_end(token)
            return value
        return None

    def put(self, token: Any, value: Any) -> None:
        if isinstance(token, str) and token:
            self._items[token] = value
            while len(self._items) > KEEP:
                self._items.popitem(last=False)


def _size(meta: dict[str, Any]) -> int:
    size = meta.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"validator request without a file size: {str(size)[:40]}")
    return size


def handle(meta: dict[str, Any], parts: list[bytes], limits: Limits, kept: _Kept) -> dict[str, Any]:
    """One request -> its facts (raises the step's typed error)."""
    op = meta.get("op")
    if op == "config" and len(parts) == 1:
        spec = parse_config(parts[0], limits)
        kept.put(meta.get("token"), spec)
        return {"r": spec.r, "base_model_name_or_path": spec.base_model_name_or_path}
    if op == "header" and len(parts) == 1:
        tensors = parse_tensors(parts[0], _size(meta), limits)
        kept.put(meta.get("token"), tensors)
        return {"tensors": len(tensors.tensors)}
    if op == "adapter" and len(parts) == 2:
        spec = kept.get(meta.get("config"), LoraSpec) or parse_config(parts[0], limits)
        tensors = kept.get(meta.get("header"), SafetensorsHeader) or parse_tensors(parts[1], _size(meta), limits)
        check_tensors(spec, tensors, limits)
        return {}
    raise ValueError(f"unknown validator request {str(op)[:40]!r} with {len(parts)} part(s)")


def _cpu_limit(op: Any, limits: Limits) -> None:
    """Let the kernel stop this process once this request has used its steps' budgets and the slack."""
    used = sum(os.times()[:2])
    soft = math.ceil(used + STEPS.get(op, 1) * limits.max_pattern_seconds + CPU_SLACK_S)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def main(argv: list[str]) -> int:
    limits = limits_from_arg(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the store stops us itself
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core on SIGXCPU
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into a frame
    kept = _Kept()
    while (frame := read_frame_sync(sys.stdin.buffer)) is not None:
        meta, parts = frame
        _cpu_limit(meta.get("op"), limits)
        try:
            answer = {"facts": handle(meta, parts, limits, kept)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the store, typed where it is ours
            answer = error_meta(exc)
        out.writelines(encode({"id": meta.get("id"), **answer}))
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
