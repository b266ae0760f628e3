"""The adapter cache's policy with a recording backend (no model): tiers, LRU, pins, leases, single flight."""

from __future__ import annotations

import asyncio

import pytest

from adapterfleet.common.errors import ChecksumMismatch, InvalidAdapter, ResourceExhausted
from adapterfleet.common.tiers import ACTIVE, DISK, HOST
from adapterfleet.worker.cache import AdapterCache


class FakeBackend:
    def __init__(self, size: int = 100, fetch_delay: float = 0.0):
        self.size, self.fetch_delay = size, fetch_delay
        self.fetches: list[str] = []
        self.installed: dict[int, str] = {}
        self.disk: dict[str, dict] = {}
        self.disk_loads: list[str] = []
        self.bad: set[str] = set()

    def fetch(self, key):
        import time
        time.sleep(self.fetch_delay)
        self.fetches.append(key)
        return {"key": key}, {"adapter_model.safetensors": key.encode()}

    def parse(self, manifest, files):
        if manifest["key"] in self.bad:
            raise InvalidAdapter(f"{manifest['key']} has NaN weights")
        return {"key": manifest["key"]}

    def nbytes(self, weights):
        return self.size

    def install(self, slot, weights):
        assert slot not in self.installed, "slot overwritten while occupied"
        self.installed[slot] = weights["key"]

    def remove(self, slot):
        del self.installed[slot]

    def save_disk(self, key, manifest, files):
        self.disk[key] = files
        return self.size

    def load_disk(self, key):
        self.disk_loads.append(key)
        return ({"key": key}, self.disk[key]) if key in self.disk else None

    def drop_disk(self, key):
        self.disk.pop(key, None)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def make(backend=None, slots=2, host=1000, disk=1000, wait=0.2, clock=None):
    backend = backend or FakeBackend()
    return backend, AdapterCache(backend, max_slots=slots, host_bytes=host, disk_bytes=disk, slot_wait_s=wait,
                                 clock=clock or Clock())


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_for_a_cold_adapter_fetch_once():
    backend, cache = make(FakeBackend(fetch_delay=0.05))

    async def main():
        leases = await asyncio.gather(*(cache.acquire("a@sha256:1") for _ in range(20)))
        assert {lease.slot for lease in leases} == {0}
        assert leases[0].entry.refs == 20
        for lease in leases:
            lease.release()

    run(main())
    assert backend.fetches == ["a@sha256:1"]
    assert cache.stats.cold_loads == 1


def test_least_recently_used_idle_adapter_is_evicted_from_the_slots():
    backend, cache = make(slots=2)

    async def main():
        for key in ("a", "b"):
            (await cache.acquire(key)).release()
        (await cache.acquire("a")).release()  # a is now more recent than b
        (await cache.acquire("c")).release()
        return {e.key: e.tier for e in cache.entries()}

    tiers = run(main())
    assert tiers == {"a": ACTIVE, "b": HOST, "c": ACTIVE}
    assert sorted(backend.installed.values()) == ["a", "c"]
    assert cache.stats.evictions[ACTIVE] == 1


def test_pinned_and_in_use_adapters_are_never_evicted():
    backend, cache = make(slots=2, wait=0.3)

    async def main():
        await cache.prefetch("pinned", pin=True)
        busy = await cache.acquire("busy")
        with pytest.raises(ResourceExhausted, match="--max-slots"):
            await cache.acquire("third")
        assert sorted(backend.installed.values()) == ["busy", "pinned"]
        busy.release()
        lease = await cache.acquire("third")  # now "busy" is idle and goes
        assert sorted(backend.installed.values()) == ["pinned", "third"]
        lease.release()

    run(main())


def test_waiting_request_gets_the_slot_when_a_lease_ends():
    backend, cache = make(slots=1, wait=5.0)

    async def main():
        first = await cache.acquire("a")
        waiter = asyncio.ensure_future(cache.acquire("b"))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        first.release()
        lease = await asyncio.wait_for(waiter, 2.0)
        assert lease.key == "b" and backend.installed == {0: "b"}

    run(main())


def test_host_eviction_falls_back_to_disk_without_refetching():
    backend, cache = make(slots=1, host=150, disk=1000)

    async def main():
        for key in ("a", "b", "a"):
            (await cache.acquire(key)).release()
            await cache.flush()  # the disk write runs after the load; let it land

    run(main())
    assert backend.fetches == ["a", "b"]  # the second "a" came from local disk
    assert backend.disk_loads == ["a"]
    assert cache.stats.evictions[HOST] >= 1


def test_disk_budget_evicts_least_recently_used_files():
    backend, cache = make(slots=1, host=100, disk=250)

    async def main():
        for key in ("a", "b", "c"):
            (await cache.acquire(key)).release()
            await cache.flush()

    run(main())
    assert sorted(backend.disk) == ["b", "c"]
    assert cache.tier_bytes(DISK) <= 250


def test_unload_in_use_waits_for_the_last_request_then_frees_everything():
    backend, cache = make()

    async def main():
        lease = await cache.acquire("a")
        assert await cache.unload("a")
        assert backend.installed == {0: "a"}  # still serving the request that holds it
        lease.release()
        await asyncio.sleep(0.05)
        assert backend.installed == {} and backend.disk == {} and cache.entries() == []

    run(main())


def test_a_failed_load_reaches_every_waiter_and_leaves_nothing_behind():
    backend = FakeBackend(fetch_delay=0.05)
    backend.bad.add("nan")
    _, cache = make(backend)

    async def main():
        results = await asyncio.gather(*(cache.acquire("nan") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, InvalidAdapter) for r in results)

    run(main())
    assert backend.fetches == ["nan"] and backend.installed == {}
    assert cache.entries() == [] and backend.disk == {}  # nothing listed, announced, or kept on disk


class CorruptStore(FakeBackend):
    """The store's bytes do not hash to their manifest: every fetch is DATA_LOSS."""

    def fetch(self, key):
        self.fetches.append(key)
        raise ChecksumMismatch(f"{key}: adapter_model.safetensors does not hash to its manifest digest")


class BrokenInstall(FakeBackend):
    def install(self, slot, weights):
        raise RuntimeError("device error")


@pytest.mark.parametrize("tier", [ACTIVE, HOST, DISK])
def test_a_data_loss_load_leaves_no_entry_in_any_tier(tier):
    backend, cache = make(CorruptStore())

    async def main():
        for _ in range(2):  # and a second try fetches again: nothing stale stands in the way
            with pytest.raises(ChecksumMismatch):
                await cache.prefetch("a@sha256:1", tier=tier)
            assert cache.entries() == [] and cache.loading() == []

    run(main())
    assert backend.fetches == ["a@sha256:1"] * 2 and backend.disk == {}


def test_a_load_whose_install_fails_takes_back_its_host_and_disk_copies():
    backend, cache = make(BrokenInstall())

    async def main():
        with pytest.raises(RuntimeError):
            await cache.acquire("a@sha256:1")

    run(main())
    assert cache.entries() == [] and backend.disk == {}


def test_a_failed_load_keeps_what_was_resident_before():
    backend, cache = make()

    async def main():
        await cache.prefetch("a@sha256:1", tier=DISK)
        backend.__class__ = BrokenInstall
        with pytest.raises(RuntimeError):
            await cache.acquire("a@sha256:1")
        assert [(e.key, e.tier) for e in cache.entries()] == [("a@sha256:1", DISK)]

    run(main())


def test_load_to_host_and_disk_tiers_without_a_slot():
    backend, cache = make()

    async def main():
        assert (await cache.prefetch("h", tier=HOST)).tier == HOST
        assert (await cache.prefetch("d", tier=DISK)).tier == DISK

    run(main())
    assert backend.installed == {}


def test_many_concurrent_loads_over_few_slots_never_share_or_overwrite_a_slot():
    import time as _time

    class SlowRemove(FakeBackend):
        def remove(self, slot):
            _time.sleep(0.01)  # removal takes time: concurrent loads must not pick the same victim or slot
            super().remove(slot)

    backend, cache = make(SlowRemove(), slots=2, wait=5.0, clock=_time.monotonic)

    async def main():
        async def use(key):
            lease = await cache.acquire(key)
            assert backend.installed[lease.slot] == key
            await asyncio.sleep(0.005)
            lease.release()

        await asyncio.gather(*(use(f"k{i % 7}") for i in range(60)))

    run(main())
    assert len(backend.installed) <= 2


class SlowDisk(FakeBackend):
    """A backend whose disk writes wait for ``written`` to be set (threading.Event: they run in a thread)."""

    def __init__(self, fail: bool = False):
        import threading

        super().__init__()
        self.written, self.fail = threading.Event(), fail

    def save_disk(self, key, manifest, files):
        assert self.written.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().save_disk(key, manifest, files)


def test_a_cold_load_serves_before_its_disk_write_lands():
    backend, cache = make(SlowDisk())

    async def main():
        lease = await cache.acquire("a")  # would hang here if the load waited for the disk
        assert backend.installed == {0: "a"} and backend.disk == {} and cache.tier_bytes(DISK) == 0
        lease.release()
        backend.written.set()
        await cache.flush()
        assert backend.disk == {"a": {"adapter_model.safetensors": b"a"}} and cache.tier_bytes(DISK) == 100

    run(main())


def test_a_disk_tier_load_of_an_adapter_just_served_answers_once_its_files_are_on_disk():
    """An active load keeps its files on disk off the request's path; a disk-tier LoadAdapter asked meanwhile waits
    for that write (it answered with the files not there yet)."""
    backend, cache = make(SlowDisk())

    async def main():
        (await cache.acquire("a")).release()
        disk = asyncio.ensure_future(cache.prefetch("a", DISK))
        await asyncio.sleep(0.05)
        assert not disk.done() and backend.disk == {}
        backend.written.set()
        entry = await disk
        assert entry.disk_bytes == 100 and backend.disk == {"a": {"adapter_model.safetensors": b"a"}}

    run(main())


def test_unload_during_a_disk_write_waits_for_it_and_leaves_nothing_on_disk():
    backend, cache = make(SlowDisk())

    async def main():
        (await cache.acquire("a")).release()
        unload = asyncio.ensure_future(cache.unload("a"))
        await asyncio.sleep(0.05)
        assert not unload.done()  # waiting for the write, not racing it
        backend.written.set()
        assert await unload
        assert backend.disk == {} and cache.entries() == [] and backend.installed == {}

    run(main())


def test_a_disk_write_that_fails_is_logged_and_the_adapter_still_serves(caplog):
    backend, cache = make(SlowDisk(fail=True))
    backend.written.set()

    async def main():
        (await cache.acquire("a")).release()
        await cache.flush()
        assert cache.tier_bytes(DISK) == 0 and [e.key for e in cache.entries()] == ["a"]
        (await cache.acquire("a")).release()  # still in its slot

    run(main())
    assert backend.fetches == ["a"]
    assert "could not keep a on local disk" in caplog.text and "No space left" in caplog.text


def test_a_disk_tier_load_refuses_bytes_that_do_not_load_here_and_keeps_nothing():
    backend = FakeBackend()
    backend.bad.add("other-base@sha256:1")
    _, cache = make(backend)

    async def main():
        with pytest.raises(InvalidAdapter):  # parsed as a host load is: not kept on disk, not reported resident
            await cache.prefetch("other-base@sha256:1", tier=DISK)
        assert cache.entries() == [] and cache.loading() == []

    run(main())
    assert backend.disk == {}


def test_an_entry_whose_first_load_is_under_way_reports_loading_not_disk():
    backend = FakeBackend(fetch_delay=0.2)
    _, cache = make(backend)

    async def main():
        load = asyncio.ensure_future(cache.acquire("a"))
        await asyncio.sleep(0.05)  # fetching: the entry exists, no tier holds it yet
        assert [(e.key, e.tier) for e in cache.entries()] == [("a", "loading")]
        lease = await load
        assert [(e.key, e.tier) for e in cache.entries()] == [("a", ACTIVE)]
        lease.release()

    run(main())


def test_a_request_cancelled_during_a_shared_load_does_not_fail_the_others():
    """The request that started a cold load goes away (its client hung up): the load goes on for the requests
    that wait on it, and what it installs is the cache's, not an orphan in a slot the cache thinks free."""
    backend, cache = make(FakeBackend(fetch_delay=0.2))

    async def main():
        first = asyncio.ensure_future(cache.acquire("a@sha256:1"))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(cache.acquire("a@sha256:1"))
        await asyncio.sleep(0.02)
        first.cancel()
        lease = await asyncio.wait_for(second, 5)
        assert first.cancelled()
        assert backend.fetches == ["a@sha256:1"]
        assert backend.installed == {lease.slot: "a@sha256:1"}
        lease.release()

    run(main())


def test_a_load_whose_only_request_was_cancelled_finishes_and_stays_resident():
    backend, cache = make(FakeBackend(fetch_delay=0.1))

    async def main():
        first = asyncio.ensure_future(cache.acquire("a@sha256:1"))
        await asyncio.sleep(0.02)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        while cache.loading():
            await asyncio.sleep(0.01)
        (entry,) = cache.entries()
        assert entry.tier == ACTIVE and backend.installed == {entry.slot: "a@sha256:1"}
        lease = await cache.acquire("a@sha256:1")  # a hit: no second fetch
        assert lease.slot == entry.slot and backend.fetches == ["a@sha256:1"]
        lease.release()
        await cache.flush()

    run(main())


@pytest.mark.parametrize("tier", [HOST, DISK])
def test_a_tier_load_asked_while_a_request_loads_the_same_adapter_waits_for_that_load(tier):
    backend, cache = make(FakeBackend(fetch_delay=0.1))

    async def main():
        serving = asyncio.ensure_future(cache.acquire("a@sha256:1"))
        await asyncio.sleep(0.02)
        entry = await cache.prefetch("a@sha256:1", tier, pin=True)
        lease = await serving
        assert entry is lease.entry and entry.pinned and entry.tier == ACTIVE
        assert backend.fetches == ["a@sha256:1"] and cache.loading() == []
        lease.release()
        await cache.flush()

    run(main())


@pytest.mark.parametrize("in_use", [False, True])
def test_unload_during_a_load_waits_for_it_and_frees_the_slot(in_use):
    """UnloadAdapter arriving while the adapter is still being fetched: the load ends first and is then unloaded
    (at once, or when its request ends); no slot stays taken by an entry nobody lists."""
    backend, cache = make(FakeBackend(fetch_delay=0.1), slots=1)

    async def main():
        serving = asyncio.ensure_future(cache.acquire("a@sha256:1"))
        await asyncio.sleep(0.02)
        if not in_use:
            serving.cancel()  # its client hung up: the load goes on, and nobody will hold it
        assert await cache.unload("a@sha256:1")
        if in_use:
            (await serving).release()
        while cache.entries():
            await asyncio.sleep(0.01)
        assert backend.installed == {} and cache.tier_bytes(ACTIVE) == 0
        lease = await cache.acquire("b@sha256:2")  # the only slot is free again
        assert lease.slot == 0
        lease.release()
        await cache.flush()

    run(main())


def test_an_unload_cancelled_while_its_remove_waits_for_a_thread_frees_the_slot_only_once_removed():
    """UnloadAdapter's caller gives up while the remove waits for a thread (the worker's threads are busy with
    fetches): the remove still runs, and the slot is free only after it, so the next install there works."""
    import concurrent.futures
    import threading

    backend, cache = make(slots=1)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        (await cache.acquire("a@sha256:1")).release()
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait)  # the one thread is busy
        unload = asyncio.ensure_future(cache.unload("a@sha256:1"))
        await asyncio.sleep(0.05)
        unload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unload
        assert cache.needs_fetch("b@sha256:2") and backend.installed == {0: "a@sha256:1"}
        gate.set()
        await busy
        lease = await asyncio.wait_for(cache.acquire("b@sha256:2"), 5)
        assert lease.slot == 0 and backend.installed == {0: "b@sha256:2"}
        lease.release()
        await cache.flush()

    run(main())


class Armed(FakeBackend):
    """Calls ``hook`` on the loop at the first clock reading after ``arm_on`` ran in its thread: the load's last step
    (its ``_touch``), so whatever the hook starts runs after that load has finished and before its done callbacks."""

    def __init__(self, arm_on: str):
        super().__init__()
        self.arm_on, self.armed, self.hook = arm_on, False, None

    def install(self, slot, weights):
        super().install(slot, weights)
        self.armed = self.armed or self.arm_on == "install"

    def save_disk(self, key, manifest, files):
        self.armed = self.armed or self.arm_on == "save_disk"
        return super().save_disk(key, manifest, files)

    def clock(self):
        if self.armed and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return 0.0


@pytest.mark.parametrize(("first", "then", "arm_on"), [
    (ACTIVE, DISK, "install"),    # a disk-tier LoadAdapter looking while a request's load finishes
    (DISK, ACTIVE, "save_disk"),  # a request looking while a disk-tier load finishes
])
def test_a_request_that_looks_as_a_load_finishes_does_not_spin_on_it(first, then, arm_on):
    """A finished load must not stay listed for a turn of the loop: a request that looked then awaited the finished
    task (which yields nothing), looked again, and spun the worker's event loop for ever (CI hung on it)."""
    import threading

    backend = Armed(arm_on)
    cache = AdapterCache(backend, max_slots=2, host_bytes=1000, disk_bytes=1000, slot_wait_s=0.2,
                         clock=backend.clock)
    done: list[object] = []

    async def main():
        later: list[asyncio.Future] = []
        backend.hook = lambda: later.append(asyncio.ensure_future(cache.prefetch("a", then)))
        await cache.prefetch("a", first)
        while not later:
            await asyncio.sleep(0.01)
        entry = await later[0]
        await cache.flush()
        done.append(entry)

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(10)
    if runner.is_alive():
        cache._loading.clear()  # frees the spinning loop, so that a failing run ends
        runner.join(10)
        pytest.fail("the event loop spun on a finished load")
    assert done and done[0].tier == ACTIVE and done[0].disk_bytes == 100 and backend.fetches == ["a"]
