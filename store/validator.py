"""Where push-time validation runs, so that it never holds the store's event loop.

    trivially small  (header <= INLINE_BYTES)   on the loop: microseconds
    everything else                            validator threads (Python switches threads every ms in the store,
                                               and regex matching releases the GIL)

What bounds the rest is size: ``Limits.max_header_bytes`` (2 MiB, ~15,000 tensors: far beyond any real adapter) and
``Limits.max_config_bytes``, since parsing a header holds the GIL in C for a time that grows with its size. No child
process: its arguments and answers would cross as pickles, and nothing here is ever unpickled.

Every step runs under a CPU budget (``Limits.max_pattern_seconds``, :func:`patterns.cpu_budget`). The threads start
on first use; :meth:`Validator.close` stops them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from adapterfleet.store.adapter_config import LoraSpec, parse_adapter_config
from adapterfleet.store.config import Limits
from adapterfleet.store.patterns import cpu_budget
from adapterfleet.store.safetensors_header import SafetensorsHeader, parse_header
from adapterfleet.store.validation import check_adapter

INLINE_BYTES = 16 << 10          # a header this small (~100 tensors) parses in microseconds
T = TypeVar("T")


# ---- the steps ------------------------------------------------------------------------------------------------------


def _budgeted(seconds: float, fn: Callable[..., T], *args) -> T:
    with cpu_budget(seconds):  # entered in the thread that does the work: the budget counts this thread's CPU
        return fn(*args)


def _config(data: bytes, limits: Limits) -> LoraSpec:
    return _budgeted(limits.max_pattern_seconds, functools.partial(
        parse_adapter_config, max_rank=limits.max_rank, max_bytes=limits.max_config_bytes), data)


def _header(data: bytes, size: int, limits: Limits) -> SafetensorsHeader:
    return _budgeted(limits.max_pattern_seconds, functools.partial(
        parse_header, max_header_bytes=limits.max_header_bytes), data, size)


def _adapter(spec: LoraSpec, tensors: SafetensorsHeader, limits: Limits) -> None:
    _budgeted(limits.max_pattern_seconds, check_adapter, spec, tensors)


# ---- the executors ---------------------------------------------------------------------------------------------------


class Validator:
    def __init__(self, limits: Limits, threads: int = 2):
        self.limits = limits
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="store-validate")  # threads start on use

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def config(self, data: bytes) -> LoraSpec:
        """Parse adapter_config.json. Never on the loop: however small, a config may bring patterns to compile."""
        return await self._run(_config, data, self.limits)

    async def header(self, data: bytes, size: int) -> SafetensorsHeader:
        """Parse a safetensors header (``data``: its bytes, length prefix included)."""
        if len(data) <= INLINE_BYTES:
            return _header(data, size, self.limits)
        return await self._run(_header, data, size, self.limits)

    async def adapter(self, spec: LoraSpec, tensors: SafetensorsHeader) -> None:
        """Check the tensors against the config."""
        await self._run(_adapter, spec, tensors, self.limits)
