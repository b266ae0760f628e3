"""Where push-time validation runs, so that it never holds the store's event loop.

    trivially small header (<= INLINE_BYTES)   on the loop: microseconds
    everything else, processes > 0             validator processes (validate_pool.py): a push's parsing and checking
                                               never holds the store's GIL, however big or hostile the adapter
    everything else, processes == 0            validator threads (Python switches threads every ms in the store,
                                               and regex matching releases the GIL; parsing a big header does not)

Sizes bound the work (``Limits.max_header_bytes``: 2 MiB, ~15,000 tensors; ``Limits.max_config_bytes``), and every
step runs under a CPU budget (``Limits.max_pattern_seconds``, validate_steps.py). Nothing crosses to a process as a
pickle: bytes go in, the few facts a push needs come back (:class:`ConfigFacts`, :class:`HeaderFacts`), and the
final check names the config and header it checks by the tokens they were parsed under. Threads and processes
start on first use; :meth:`Validator.close` stops them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count
from typing import Any, TypeVar

from adapterfleet.store.adapter_config import LoraSpec
from adapterfleet.store.config import Limits
from adapterfleet.store.safetensors_header import SafetensorsHeader
from adapterfleet.store.validate_pool import ValidatorPool
from adapterfleet.store.validate_steps import check_tensors, parse_config, parse_tensors

INLINE_BYTES = 16 << 10          # a header this small (~100 tensors) parses in microseconds
T = TypeVar("T")


@dataclass(frozen=True)
class ConfigFacts:
    """A valid adapter_config.json: what a push needs of it, and its bytes for the final check."""

    r: int
    base_model_name_or_path: str | None
    data: bytes = field(repr=False)
    token: str = ""
    spec: LoraSpec | None = field(default=None, repr=False, compare=False)  # parsed in this process (threads)


@dataclass(frozen=True)
class HeaderFacts:
    """A sane safetensors header (``data``, length prefix included) of a ``size``-byte file."""

    data: bytes = field(repr=False)
    size: int
    token: str = ""
    tensors: SafetensorsHeader | None = field(default=None, repr=False, compare=False)  # parsed in this process


def _config_facts(facts: dict[str, Any], data: bytes, token: str) -> ConfigFacts:
    r, base = facts.get("r"), facts.get("base_model_name_or_path")
    if not isinstance(r, int) or isinstance(r, bool) or not (base is None or isinstance(base, str)):
        raise RuntimeError(f"the validator process answered a config with facts {str(facts)[:200]}")
    return ConfigFacts(r, base, data, token)


class Validator:
    """Validation steps of pushes under ``limits``: in ``processes`` child processes, or (0) in ``threads``."""

    def __init__(self, limits: Limits, threads: int = 2, processes: int = 0):
        self.limits = limits
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="store-validate")  # threads start on use
        self._pool = ValidatorPool(limits, processes) if processes > 0 else None  # processes start on use
        self._tokens = count(1)

    @property
    def pool(self) -> ValidatorPool | None:
        return self._pool

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.close()

    async def _run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def config(self, data: bytes) -> ConfigFacts:
        """Parse adapter_config.json. Never on the loop: however small, a config may bring patterns to compile."""
        if self._pool is None:
            spec = await self._run(parse_config, data, self.limits)
            return ConfigFacts(spec.r, spec.base_model_name_or_path, data, spec=spec)
        token = f"c{next(self._tokens)}"
        return _config_facts(await self._pool.call("config", {"token": token}, [data], keeps=token), data, token)

    async def header(self, data: bytes, size: int) -> HeaderFacts:
        """Parse a safetensors header (``data``: its bytes, length prefix included, of a ``size``-byte file)."""
        if len(data) <= INLINE_BYTES:
            return HeaderFacts(data, size, tensors=parse_tensors(data, size, self.limits))
        if self._pool is None:
            return HeaderFacts(data, size, tensors=await self._run(parse_tensors, data, size, self.limits))
        token = f"h{next(self._tokens)}"
        await self._pool.call("header", {"token": token, "size": size}, [data], keeps=token)
        return HeaderFacts(data, size, token)

    async def adapter(self, config: ConfigFacts, header: HeaderFacts) -> None:
        """Check the tensors against the config."""
        if self._pool is None:
            await self._run(self._check_here, config, header)
            return
        await self._pool.call("adapter", {"config": config.token, "header": header.token, "size": header.size},
                              [config.data, header.data], uses=[t for t in (config.token, header.token) if t])

    def _check_here(self, config: ConfigFacts, header: HeaderFacts) -> None:
        spec = config.spec if config.spec is not None else parse_config(config.data, self.limits)
        tensors = header.tensors if header.tensors is not None else parse_tensors(header.data, header.size,
                                                                                  self.limits)
        check_tensors(spec, tensors, self.limits)
