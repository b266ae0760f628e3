"""Small asyncio helpers for driving blocking I/O without stalling the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

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
