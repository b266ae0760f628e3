"""The three push-time validation steps, each under its CPU budget (``Limits.max_pattern_seconds``).

Pure: bytes in, parsed values out, :class:`InvalidAdapter` on any problem. Run in the store's validator threads or
in a validator process (validate_child.py); :mod:`.validator` decides where.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from adapterfleet.store.adapter_config import LoraSpec, parse_adapter_config
from adapterfleet.store.config import Limits
from adapterfleet.store.patterns import cpu_budget
from adapterfleet.store.safetensors_header import SafetensorsHeader, parse_header
from adapterfleet.store.validation import check_adapter

T = TypeVar("T")


def _budgeted(seconds: float, fn: Callable[..., T], *args) -> T:
    with cpu_budget(seconds):  # entered in the thread that does the work: the budget counts this thread's CPU
        return fn(*args)


def parse_config(data: bytes, limits: Limits) -> LoraSpec:
    """adapter_config.json -> LoraSpec (its patterns compiled)."""
    return _budgeted(limits.max_pattern_seconds, functools.partial(
        parse_adapter_config, max_rank=limits.max_rank, max_bytes=limits.max_config_bytes), data)


def parse_tensors(data: bytes, size: int, limits: Limits) -> SafetensorsHeader:
    """A safetensors header (``data``: its bytes, length prefix included, of a ``size``-byte file)."""
    return _budgeted(limits.max_pattern_seconds, functools.partial(
        parse_header, max_header_bytes=limits.max_header_bytes), data, size)


def check_tensors(spec: LoraSpec, tensors: SafetensorsHeader, limits: Limits) -> None:
    """The tensors against the config (names, ranks, shapes)."""
    _budgeted(limits.max_pattern_seconds, check_adapter, spec, tensors)
