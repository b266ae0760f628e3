"""Small asyncio helpers for driving blocking I/O without stalling the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def prefetch(it: Iterator[T], depth: int = 4) -> AsyncIterator[T]:
    """Run a blocking iterator in its own thread, up to ``depth`` items ahead of the consumer.

    Overlaps the producer's I/O (e.g. reading S3) with the consumer's (e.g. sending gRPC messages). If the
    consumer stops early, the producer stops at its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in it:
                room.acquire()
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, item)
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # wake a producer waiting for room; it sees `stop` and ends
