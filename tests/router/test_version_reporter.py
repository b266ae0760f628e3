"""The router's per-version figures reach the store exactly once, a report on its way when the router stops
included (it was cancelled and its counts lost)."""

from __future__ import annotations

import asyncio

from adapterfleet.router.version_stats import Reporter, VersionStats

KEY = "acme/a@sha256:" + "ab" * 32


def test_a_report_on_its_way_at_stop_is_neither_lost_nor_sent_twice():
    async def main():
        stats = VersionStats()
        sent: list[int] = []
        release, began = asyncio.Event(), asyncio.Event()

        async def send(window):
            began.set()
            await release.wait()  # a slow store
            sent.append(sum(f.requests for f in window.values()))

        reporter = Reporter(stats, send, every_s=0.01)
        for _ in range(7):
            stats.observe(KEY, "server", 5.0)
        reporter.start()
        await asyncio.wait_for(began.wait(), 5)
        stats.observe(KEY, "", 3.0)  # after the report was taken: goes in the final one
        stopping = asyncio.ensure_future(reporter.stop())
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert sent == [7, 1] and stats.window == {}

    asyncio.run(main())
