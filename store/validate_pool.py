"""The store's validator processes: a few long-lived children (validate_child.py) that parse and check pushed
adapters, so that validation never holds the store's GIL. (In a thread it did: ``json.loads`` of a 2 MiB header
holds the GIL ~25 ms in one C call, and the event loop queues behind the thread for the rest of the parse.)

Children start on first use, with the store's own interpreter, and answer one request at a time; a request waits
for a free one, preferring the child that already parsed the config and header it names. The store's side is only
pipe I/O on the event loop: no thread, no pickle. A child that dies or overruns is killed and replaced on next use,
and only the push it was validating fails:

    killed by the kernel for CPU (SIGXCPU) or no answer within the wall limit  -> InvalidAdapter (over budget)
    any other death (a crash, the OOM killer, a failed start)                    -> Unavailable (retry the push)

:meth:`ValidatorPool.close` kills and reaps every child.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from adapterfleet.common.errors import InvalidAdapter, Unavailable
from adapterfleet.store.config import Limits
from adapterfleet.store.validate_child import KEEP
from adapterfleet.store.validate_wire import STEPS, WireError, encode, raise_if_error, read_frame

log = logging.getLogger("adapterfleet.store")

CHILD_MODULE = "adapterfleet.store.validate_child"
# No answer within (steps x budget) x WALL_FACTOR + WALL_SLACK_S seconds: the child is stuck (the kernel already
# stops one that spends its CPU). Generous, so that a loaded machine never trips it: CPU budgets are CPU seconds.
WALL_FACTOR = 3.0
WALL_SLACK_S = 10.0
EXIT_WAIT_S = 1.0   # after its pipe closed, how long a child may take to exit before it is killed
REAP_S = 5.0        # close(): how long to wait for a killed child to be reaped


@dataclass
class _Child:
    proc: subprocess.Popen
    reader: asyncio.StreamReader
    read_pipe: asyncio.BaseTransport
    write_pipe: asyncio.WriteTransport
    tokens: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP))  # what it keeps parsed (its last few)


def over_budget(op: str, seconds: float, budget: float) -> InvalidAdapter:
    where = "adapter_model.safetensors" if op == "header" else "adapter_config.json"
    return InvalidAdapter(
        f"{where}: validating it took more than {seconds:g} s (the budget is {budget:g} s of CPU per step), so the "
        "store stopped it; use fewer or simpler patterns (target_modules, exclude_modules, modules_to_save, "
        "rank_pattern/alpha_pattern keys) or fewer tensors")


def _died(status: int | None) -> str:
    if status is None:
        return "stopped answering"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with status {status}"


class ValidatorPool:
    """Up to ``processes`` validator children for limits ``limits``; nothing starts before the first call."""

    def __init__(self, limits: Limits, processes: int):
        if processes < 1:
            raise ValueError(f"a validator pool needs at least 1 process, got {processes}")
        self._limits = limits
        self._slots: list[_Child | None] = [None] * processes
        self._idle = list(range(processes))
        self._free: asyncio.Semaphore | None = None  # made on first use, in the loop that uses it
        self._ids = count(1)
        self._reaping: set[subprocess.Popen] = set()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.started = 0  # children started in all (a replaced child counts again)

    @property
    def pids(self) -> list[int]:
        """The live children's process ids."""
        return [c.proc.pid for c in self._slots if c is not None and c.proc.poll() is None]

    async def call(self, op: str, meta: dict[str, Any], parts: Sequence[bytes], *, keeps: str = "",
                   uses: Sequence[str] = ()) -> dict[str, Any]:
        """Run one step in a child: its facts, or its typed error raised here. ``keeps``: the token the child keeps
        the parsed value under; ``uses``: tokens of values parsed before (a child holding them is preferred)."""
        if self._closed:
            raise Unavailable("the store is stopping; push again to another store or once it is back")
        if self._free is None:
            self._free = asyncio.Semaphore(len(self._slots))
        async with self._free:
            slot = self._take(uses)
            try:
                facts = await self._call_in(slot, op, meta, parts)
            finally:
                self._idle.append(slot)
        child = self._slots[slot]
        if child is not None and keeps:
            child.tokens.append(keeps)
        return facts

    def _take(self, uses: Sequence[str]) -> int:
        """An idle slot: the one whose child holds most of ``uses``, then one with a child already started."""
        def rank(slot: int) -> tuple[int, bool]:
            child = self._slots[slot]
            return (0, False) if child is None else (sum(t in child.tokens for t in uses), True)

        best = max(self._idle, key=rank)
        self._idle.remove(best)
        return best

    async def _call_in(self, slot: int, op: str, meta: dict[str, Any], parts: Sequence[bytes]) -> dict[str, Any]:
        child = self._slots[slot]
        if child is None or child.proc.poll() is not None:
            self._drop(slot)
            child = self._slots[slot] = await self._spawn()
        rid = next(self._ids)
        wall = STEPS.get(op, 1) * self._limits.max_pattern_seconds * WALL_FACTOR + WALL_SLACK_S
        try:
            for buf in encode({"id": rid, "op": op, **meta}, parts):
                child.write_pipe.write(buf)
            answer, _ = await asyncio.wait_for(read_frame(child.reader), wall)
            if answer.get("id") != rid:
                raise WireError(f"answer {answer.get('id')!r} to request {rid}")
        except TimeoutError:
            self._drop(slot, child)
            log.warning("a validator process gave no answer to a %s request within %.0f s; killed", op, wall)
            raise over_budget(op, wall, self._limits.max_pattern_seconds) from None
        except (asyncio.IncompleteReadError, ConnectionError, WireError) as err:
            try:
                status = await self._exit_status(child)
            finally:
                self._drop(slot, child)
            if status == -signal.SIGXCPU:
                raise over_budget(op, STEPS.get(op, 1) * self._limits.max_pattern_seconds,
                                  self._limits.max_pattern_seconds) from None
            log.warning("a validator process %s during a %s request (%s); it is replaced", _died(status), op, err)
            raise Unavailable(f"the store's validator process {_died(status)} while checking this adapter; the push "
                              "was refused and the process replaced: push again (if it fails the same way, the "
                              "store's log says more)") from None
        except BaseException:  # cancelled (the caller went away): its answer would come to the next request
            self._drop(slot, child)
            raise
        raise_if_error(answer)
        facts = answer.get("facts")
        if not isinstance(facts, dict):
            raise RuntimeError(f"the validator process answered a {op} request without facts")
        return facts

    async def _spawn(self) -> _Child:
        if self._closed:
            raise Unavailable("the store is stopping; push again to another store or once it is back")
        loop = asyncio.get_running_loop()
        args = [sys.executable, "-m", CHILD_MODULE, json.dumps(dataclasses.asdict(self._limits))]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as err:
            raise Unavailable(f"the store could not start a validator process ({err}); push again") from None
        self.started += 1
        try:
            reader = asyncio.StreamReader()
            read_pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
            write_pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, proc.stdin)
        except BaseException:
            proc.kill()
            self._reap(proc)
            raise
        return _Child(proc, reader, read_pipe, write_pipe)

    async def _exit_status(self, child: _Child) -> int | None:
        """The exit status of a child whose pipe closed (None if it has not exited within EXIT_WAIT_S)."""
        for _ in range(int(EXIT_WAIT_S / 0.01)):
            status = child.proc.poll()
            if status is not None:
                return status
            await asyncio.sleep(0.01)
        return None

    def _drop(self, slot: int, child: _Child | None = None) -> None:
        """Stop the slot's child (only if it is still ``child``, when given); the slot starts a new one on use."""
        current = self._slots[slot]
        if current is None or (child is not None and current is not child):
            return
        self._slots[slot] = None
        self._stop(current)
        self._reap(current.proc)

    @staticmethod
    def _stop(child: _Child) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed already: the pipes close with the process
            if not child.write_pipe.is_closing():
                child.write_pipe.abort()
            if not child.read_pipe.is_closing():
                child.read_pipe.close()
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()

    def _reap(self, proc: subprocess.Popen) -> None:
        """Collect a killed child's exit status soon (no zombie), without blocking the loop."""
        if proc.poll() is not None:
            return
        self._reaping.add(proc)

        async def reap() -> None:
            while proc.poll() is None:
                await asyncio.sleep(0.01)
            self._reaping.discard(proc)

        with contextlib.suppress(RuntimeError):  # no running loop: close() waits for it
            task = asyncio.get_running_loop().create_task(reap())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Kill every child and wait until each is reaped (calls in flight fail with Unavailable)."""
        self._closed = True
        procs = list(self._reaping)
        for slot, child in enumerate(self._slots):
            if child is not None:
                self._slots[slot] = None
                self._stop(child)
                procs.append(child.proc)
        for proc in procs:
            try:
                proc.wait(REAP_S)
            except subprocess.TimeoutExpired:
                log.warning("validator process %d did not exit within %.0f s of SIGKILL", proc.pid, REAP_S)
            self._reaping.discard(proc)
        for task in list(self._tasks):
            task.cancel()
