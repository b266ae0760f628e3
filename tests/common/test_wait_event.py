"""wait_event: a cancellation that arrives as the event is set stops the waiter (on Python 3.11,
asyncio.wait_for(event.wait(), t) returns normally then, and a loop around it runs on)."""

from __future__ import annotations

import asyncio
import contextlib

from adapterfleet.common.aio import wait_event


async def _cancelled_as_the_event_is_set(wait) -> bool:
    """Whether a loop that waits on an event with ``wait`` stops when it is cancelled in the same turn of the
    event loop as the event is set (as a controller's stop() can meet a wake-up)."""
    event = asyncio.Event()
    turns = 0

    async def loop_until_cancelled() -> None:
        nonlocal turns
        while turns < 5:  # ends by itself (not cancelled) if the cancellation was lost
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await wait(event)
            event.clear()
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(loop_until_cancelled())
    await asyncio.sleep(0.01)  # the task waits on the event now (its timeout is 0.05 s)
    event.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return task.cancelled()


def test_wait_event_never_loses_a_cancellation():
    assert asyncio.run(_cancelled_as_the_event_is_set(lambda e: wait_event(e, 0.05)))


def test_wait_event_times_out_with_false_and_reports_a_set_event():
    async def main():
        event = asyncio.Event()
        assert await wait_event(event, 0.01) is False
        asyncio.get_running_loop().call_later(0.01, event.set)
        assert await wait_event(event, 5.0) is True
        assert await wait_event(event, 0.0) is True  # already set: no wait at all

    asyncio.run(main())
