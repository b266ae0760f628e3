"""adapterfleet.common.tiers: one set of tier names, the proto enum on the wire, and every user of them agreeing:
the worker's cache, servicer, announcer and metrics, the registry record, the router's membership and placement."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from adapterfleet.common.tiers import ACTIVE, CACHE_TIERS, DISK, HOST, LOADING, TIERS, tier_from_pb, tier_to_pb
from adapterfleet.v1 import common_pb2

KEY = "team/a@sha256:" + "ab" * 32


def test_the_names_are_the_proto_enum_in_the_same_order():
    wire = sorted(v for v in common_pb2.Tier.values() if v != common_pb2.TIER_UNSPECIFIED)
    assert [common_pb2.Tier.Name(v).removeprefix("TIER_").lower() for v in wire] == list(TIERS)
    assert TIERS == (ACTIVE, HOST, DISK, LOADING) and CACHE_TIERS == (ACTIVE, HOST, DISK)
    for name in TIERS:
        assert tier_from_pb(tier_to_pb(name)) == name
    assert tier_to_pb("") == common_pb2.TIER_UNSPECIFIED and tier_from_pb(common_pb2.TIER_UNSPECIFIED) == ""
    assert tier_from_pb(99) == ""  # a tier from a newer build: unknown, not an error
    with pytest.raises(ValueError, match="active, host, disk, loading"):
        tier_to_pb("gpu")


def test_placement_prefers_a_holder_in_an_earlier_tier():
    from adapterfleet.router.placement import Placement, PlacementConfig, WorkerView

    for i, better in enumerate(TIERS):
        for worse in TIERS[i + 1:]:
            for ids in (("w0", "w1"), ("w1", "w0")):  # whichever the rendezvous order would favour
                ws = [WorkerView(ids[0], "h:0", "eu", 0.0, 4, {KEY: worse}),
                      WorkerView(ids[1], "h:1", "eu", 0.0, 4, {KEY: better})]
                assert Placement(PlacementConfig()).choose(KEY, ws)[0].id == ids[1], (better, worse)


def test_the_cache_and_its_metrics_use_the_cache_tiers():
    from adapterfleet.worker.cache import CacheStats, Entry
    from adapterfleet.worker.metrics import WorkerCollector

    assert [Entry("k", slot=0).tier, Entry("k", weights=object()).tier, Entry("k", disk_bytes=1).tier] == [
        ACTIVE, HOST, DISK]
    assert tuple(CacheStats().evictions) == CACHE_TIERS
    sizes = {ACTIVE: 1, HOST: 2, DISK: 3}
    core = SimpleNamespace(
        cache=SimpleNamespace(stats=CacheStats(), tier_bytes=sizes.__getitem__, entries=lambda: []), inflight=0,
        engine=SimpleNamespace(queue_depth=0, stats=SimpleNamespace(running=0, tokens=0)))
    families = {f.name: f for f in WorkerCollector(core).collect()}
    assert {s.labels["tier"]: s.value for s in families["adapterfleet_worker_cache_bytes"].samples} == sizes
    assert [s.labels["tier"] for s in families["adapterfleet_worker_cache_evictions"].samples] == sorted(CACHE_TIERS)


def fake_worker(entries, loading):
    cache = SimpleNamespace(entries=lambda: entries, loading=lambda: sorted(loading), max_slots=4)
    return SimpleNamespace(cache=cache, cfg=SimpleNamespace(region="eu"), inflight=1,
                           host=SimpleNamespace(fingerprint="sha256:" + "f" * 64, path="/base"))


def test_the_worker_sends_the_enum_and_the_router_reads_the_names():
    from adapterfleet.router.membership import Membership
    from adapterfleet.store.workers import record_from_pb
    from adapterfleet.worker.announcer import Announcer
    from adapterfleet.worker.cache import Entry
    from adapterfleet.worker.servicer import state_pb

    keys = [f"team/{t}@sha256:{i:064x}" for i, t in enumerate(TIERS)]
    entries = [Entry(keys[0], slot=0), Entry(keys[1], weights=object()), Entry(keys[2], disk_bytes=1)]
    core = fake_worker(entries, loading={keys[3]})
    wire = [common_pb2.TIER_ACTIVE, common_pb2.TIER_HOST, common_pb2.TIER_DISK, common_pb2.TIER_LOADING]

    assert [state_pb(e, core).tier for e in entries] == wire[:3]
    info = Announcer(core, "store:1", "w:1", worker_id="w1").info()
    assert {a.key: a.tier for a in info.adapters} == dict(zip(keys, wire, strict=True))
    record = record_from_pb(info)
    assert record.adapters == dict(zip(keys, TIERS, strict=True))

    async def views():
        async def source():
            return [record]
        m = Membership(source)
        await m.refresh()
        m.expect("w1", "team/new@sha256:" + "9" * 64)
        return m.views()

    [view] = asyncio.run(views())
    assert view.resident == {**dict(zip(keys, TIERS, strict=True)), "team/new@sha256:" + "9" * 64: LOADING}
