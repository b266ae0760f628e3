"""Fan-out of one request's choices through the router, and server-sent events in OpenAI's chunk format.

Each choice is its own ``RouterCore.generate`` stream (its own placement and failover); ``merged`` interleaves them as
their messages arrive. Leaving the merged stream (finished, an error, or the caller gone) cancels every choice's
call, which frees its row on the worker at the next decode step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"


async def merged(streams: list[AsyncIterator[T]]) -> AsyncGenerator[tuple[int, T], None]:
    """(index of the stream, item) as items arrive from any stream; the first error ends it (and the others)."""
    if len(streams) == 1:  # the common case: no tasks, no queue
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, list[T], BaseException | None]] = asyncio.Queue()  # [item], or [] at the end

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((i, [item], None))
            await queue.put((i, [], None))
        except Exception as err:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put((i, [], err))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, items, err = await queue.get()
            if err is not None:
                raise err
            if not items:
                running -= 1
                continue
            yield i, items[0]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def event(obj: dict) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
