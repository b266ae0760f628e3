"""Small asyncio helpers for driving blocking I/O without stalling the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")
_DONE = object()


class Prefetch(Generic[T]):
    """Run a blocking iterator in its own thread, up to ``depth`` items ahead of the consumer.

    The producer starts as soon as this object is made (so several can run ahead at once, e.g. the S3 reads of
    every file of a fetch) and overlaps its I/O with the consumer's. ``close()`` stops it at its next item.
    Must be created inside a running event loop.
    """

    def __init__(self, it: Iterator[T], depth: int = 4):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._room = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._it = it
        self._loop.run_in_executor(None, self._produce)

    def _produce(self) -> None:
        put = self._queue.put_nowait
        try:
            for item in self._it:
                self._room.acquire()
                if self._stop.is_set():
                    return
                self._loop.call_soon_threadsafe(put, item)
            self._loop.call_soon_threadsafe(put, _DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._loop.call_soon_threadsafe(put, exc)
        finally:
            close = getattr(self._it, "close", None)
            if close:
                close()

    def __aiter__(self) -> Prefetch[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is _DONE:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        self._room.release()
        return item

    def close(self) -> None:
        self._stop.set()
        self._room.release()  # wake a producer waiting for room; it sees the stop and ends


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; whether it is set. For loops that must stop when cancelled:
    ``asyncio.wait_for(event.wait(), t)`` on Python 3.11 returns normally when the cancellation arrives in the same
    turn of the loop as the event is set (the cancellation is lost, and a loop around it runs on)."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


def listed_task(listing: dict[K, asyncio.Future[T]], key: K, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` as a task of its own, listed in ``listing`` under ``key`` from now until it ends: single flight
    for callers that find it there and await it shielded (one that goes away does not cancel it for the others).

    It leaves the listing in its own last step, not in a done callback: that runs a turn of the loop later, and a
    caller that looked in between awaited the finished task (which yields nothing), looked again, and spun the event
    loop for ever. Cancelled before it ever ran (a loop closing), it leaves in its done callback. Its outcome is
    retrieved, so one that no caller awaited is not logged as lost."""
    def unlist(*_: object) -> None:
        if listing.get(key) is task:
            del listing[key]

    async def run() -> T:
        try:
            return await coro
        finally:
            unlist()

    def settled(done: asyncio.Future) -> None:
        unlist()
        coro.close()  # ended already, or never started (the task was cancelled first): no "never awaited" warning
        if not done.cancelled():
            done.exception()

    task = listing[key] = asyncio.ensure_future(run())
    task.add_done_callback(settled)
    return task
