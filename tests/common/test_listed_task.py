"""listed_task: a task listed under its key exactly while it runs, so a caller never finds a finished one there."""

from __future__ import annotations

import asyncio
import contextlib

from adapterfleet.common.aio import listed_task


def test_a_task_is_listed_while_it_runs_and_gone_in_the_turn_it_ends():
    async def main():
        listing: dict[str, asyncio.Future] = {}
        seen: list[bool] = []

        async def work() -> int:
            await asyncio.sleep(0)
            # a caller that looks right after the task's last step, before its done callbacks run
            asyncio.get_running_loop().call_soon(lambda: seen.append("a" in listing))
            return 5

        task = listed_task(listing, "a", work())
        assert listing == {"a": task}
        assert await task == 5
        assert listing == {} and seen == [False]

        never_ran = listed_task(listing, "b", work())
        never_ran.cancel()  # before its first step
        with contextlib.suppress(asyncio.CancelledError):
            await never_ran
        await asyncio.sleep(0)  # its done callback
        assert listing == {}

    asyncio.run(main())
