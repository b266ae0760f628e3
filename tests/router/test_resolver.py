"""The router's resolution cache against a store that breaks: stale-while-error within a bound, resume from the
last cursor, start over once a watch from "now" is back, one lookup per ref. The store here is a small in-memory
stand-in with the AsyncStoreClient's three calls; tests/router/test_fault_isolation.py runs the same behaviour
against a real store that is stopped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from adapterfleet.common.errors import NotFound, Unavailable
from adapterfleet.router.resolver import Resolver
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.targets import LiveTarget

K1, K2 = "t/x@sha256:" + "1" * 64, "t/x@sha256:" + "2" * 64
BREAK = object()


class Store:
    address = "127.0.0.1:5999"

    def __init__(self):
        self.up = True
        self.aliases = {"t/x@prod": K1}
        self.resolves = 0
        self.fail_next = 0  # this many Resolves answer UNAVAILABLE, as a store does once after Redis restarts
        self.cursors: list[str] = []
        self.feed: asyncio.Queue = asyncio.Queue()
        self.gate = asyncio.Event()  # resolve waits on it when cleared
        self.gate.set()

    async def resolve(self, ref: str, routing_key: str = ""):
        self.resolves += 1
        await self.gate.wait()
        if not self.up or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise Unavailable("failed to connect to all addresses")
        if ref not in self.aliases:
            raise NotFound(f"no adapter {ref}")
        return SimpleNamespace(targets=(LiveTarget(1, 100, self.aliases[ref]),))

    async def watch(self, cursor: str = "$"):
        self.cursors.append(cursor)
        if not self.up:
            raise Unavailable("failed to connect to all addresses")
        while True:
            item = await self.feed.get()
            if item is BREAK:
                raise Unavailable("Socket closed")
            yield item

    def event(self, cursor: str, name: str = "t/x") -> StoreEvent:
        return StoreEvent(cursor=cursor, type="ALIAS_SET", name=name, version=2, digest="", alias="prod",
                          targets=((2, 100),), time=0.0)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(cond, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


def run(test):
    """Run ``test(store, resolver, clock)`` on a fresh loop with a started resolver."""
    async def main():
        store, clock = Store(), Clock()
        resolver = Resolver(store, stale_max_s=60.0, settle_s=0.05, clock=clock)  # type: ignore[arg-type]
        resolver.start()
        await until(lambda: store.cursors)
        try:
            await test(store, resolver, clock)
        finally:
            await resolver.stop()

    asyncio.run(main())


async def break_watch(store: Store, resolver: Resolver) -> None:
    store.up = False
    store.feed.put_nowait(BREAK)
    await until(lambda: not resolver.watch_up)


async def restore(store: Store, resolver: Resolver) -> None:
    store.up = True
    await until(lambda: resolver.watch_up, timeout=5.0)


def test_a_cached_alias_is_served_while_the_store_is_down_and_an_uncached_ref_is_unavailable():
    async def test(store, resolver, clock):
        assert await resolver.key("t/x@prod") == K1
        await break_watch(store, resolver)
        clock.now += 30
        assert await resolver.key("t/x@prod") == K1
        assert (store.resolves, resolver.stale_serves) == (1, 1)  # served without asking the store
        with pytest.raises(Unavailable, match=r"the store at 127\.0\.0\.1:5999 cannot answer now"):
            await resolver.key("t/y@prod")
        with pytest.raises(NotFound):  # the store's own answers are not outages
            store.up = True
            await resolver.key("t/missing@prod")

    run(test)


def test_staleness_is_bounded():
    async def test(store, resolver, clock):
        await resolver.key("t/x@prod")
        await break_watch(store, resolver)
        clock.now += 61  # past stale_max_s: ask the store, which is down
        with pytest.raises(Unavailable):
            await resolver.key("t/x@prod")
        store.up = True  # the store answers again (its watch has not reconnected yet): fresh for another bound
        store.aliases["t/x@prod"] = K2
        assert await resolver.key("t/x@prod") == K2

    run(test)


def test_the_watch_resumes_from_the_last_cursor_so_no_invalidation_is_lost():
    async def test(store, resolver, clock):
        store.feed.put_nowait(store.event("5-0", name="t/other"))
        await until(lambda: resolver.cursor == "5-0")
        assert await resolver.key("t/x@prod") == K1
        await break_watch(store, resolver)
        store.aliases["t/x@prod"] = K2            # the alias moves while we are cut off...
        store.feed.put_nowait(store.event("6-0"))  # ...and the store replays that change when we resume
        await restore(store, resolver)
        assert store.cursors[-1] == "5-0"
        await until(lambda: resolver.cursor == "6-0")
        assert await resolver.key("t/x@prod") == K2

    run(test)


def test_a_watch_that_never_saw_an_event_restarts_from_now_and_then_asks_again():
    async def test(store, resolver, clock):
        assert await resolver.key("t/x@prod") == K1
        await break_watch(store, resolver)
        store.aliases["t/x@prod"] = K2  # moved during the outage: no event will ever tell us
        assert await resolver.key("t/x@prod") == K1  # still down: stale
        await restore(store, resolver)  # established once open for settle_s
        assert store.cursors[-1] == "$"
        assert await resolver.key("t/x@prod") == K2
        assert store.resolves == 2

    run(test)


def test_after_a_restart_from_now_a_failing_store_still_gets_the_stale_answer():
    async def test(store, resolver, clock):
        await resolver.key("t/x@prod")
        await break_watch(store, resolver)
        await restore(store, resolver)
        store.up = False  # the watch is up, but the lookup fails: stale within the bound
        assert await resolver.key("t/x@prod") == K1
        assert resolver.stale_serves == 1

    run(test)


def test_concurrent_misses_share_one_lookup():
    async def test(store, resolver, clock):
        store.gate.clear()
        calls = [asyncio.ensure_future(resolver.key("t/x@prod", f"user-{i}")) for i in range(50)]
        await asyncio.sleep(0.05)
        calls[0].cancel()  # a caller that goes away does not cancel the others' lookup
        store.gate.set()
        results = await asyncio.gather(*calls[1:])
        assert set(results) == {K1} and store.resolves == 1

    run(test)


def test_a_store_that_fails_once_is_asked_again():
    async def test(store, resolver, clock):
        store.fail_next = 2
        assert await resolver.key("t/x@prod") == K1
        assert store.resolves == 3

    run(test)
