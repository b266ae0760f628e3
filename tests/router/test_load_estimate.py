"""The router's view of load it does not see itself (services/router/load.py), route reuse (route.route_ttl), and
direct callers' reports feeding heat and hot-adapter copies (route.Lookaside.report)."""

from __future__ import annotations

import asyncio

import pytest

from adapterfleet.router.config import RouterConfig
from adapterfleet.router.load import LoadEstimate
from adapterfleet.router.membership import Membership
from adapterfleet.router.placement import Placement, PlacementConfig, WorkerView
from adapterfleet.router.proxy import RouterCore
from adapterfleet.router.route import Lookaside, Outcome, route_ttl
from adapterfleet.store.workers import WorkerRecord


def test_an_announcement_and_the_reports_after_it_add_up():
    est = LoadEstimate(hold_s=5.0)
    assert est.load("w", 0.0) == 0.0
    est.announced("w", load=7, own_inflight=2, now=1.0)  # 5 are not this router's
    assert est.load("w", 1.0) == 5
    est.begun("w", 3, 1.1)
    est.ended("w", 1, 1.2)
    assert est.load("w", 1.3) == 7
    est.announced("w", load=4, own_inflight=0, now=2.0)  # a new announcement replaces the reports before it
    assert est.load("w", 2.0) == 4
    est.ended("w", 9, 2.1)  # more ends than it knew of: never below zero
    assert est.load("w", 2.2) == 0


def test_reports_older_than_hold_s_are_dropped():
    est = LoadEstimate(hold_s=5.0)
    est.begun("w", 2, 10.0)  # a caller that died before reporting the ends
    assert est.load("w", 14.9) == 2
    assert est.load("w", 15.1) == 0
    est.forget(set())
    assert est.load("w", 16.0) == 0


def view(worker_id: str, load: float, region: str = "r") -> WorkerView:
    return WorkerView(worker_id, worker_id, region, load, 4, {})


def test_a_route_to_a_busier_than_average_worker_lives_a_quarter_as_long():
    views = [view("a", 1), view("b", 5), view("c", 3), view("x", 100, region="other")]
    assert route_ttl(views[0], views, 0.5) == 0.5
    assert route_ttl(views[2], views, 0.5) == 0.5   # average of its region: 3
    assert route_ttl(views[1], views, 0.5) == pytest.approx(0.125)


def core_with(workers: list[WorkerRecord], placement: PlacementConfig) -> RouterCore:
    async def source() -> list[WorkerRecord]:
        return workers

    membership = Membership(source)
    asyncio.run(membership.refresh())
    return RouterCore(RouterConfig(store="unused:1", region="r"), membership, resolver=None,  # type: ignore[arg-type]
                      placement=Placement(placement))


def test_reported_direct_requests_count_as_load_and_heat():
    key = "t/a@sha256:" + "ab" * 32
    workers = [WorkerRecord(id=w, address=f"{w}:1", region="r", capacity=4, adapters={key: "active"} if w == "a"
                            else {}) for w in ("a", "b", "c")]
    core = core_with(workers, PlacementConfig(hot_requests_per_copy=5.0, max_copies=3))
    lookaside = Lookaside(core)
    before = {v.id: v.load for v in core.membership.views()}
    assert before == {"a": 0, "b": 0, "c": 0}

    class Keys:  # a canonical key resolves to itself
        async def key(self, ref: str, routing_key: str = "") -> str:
            return ref

    core.resolver = Keys()  # type: ignore[assignment]
    never_routed = "t/b@sha256:" + "cd" * 32

    async def report() -> None:
        await lookaside.route(key, count=False)  # the caller's route came from this router (a renewal: no count)
        lookaside.report([Outcome(key, "a", requests=200, finished=0), Outcome(key, "gone", requests=5),
                          Outcome(never_routed, "b", requests=50, finished=50)])
        await asyncio.sleep(0)  # the copies' loads start as tasks (they fail here: no worker listens)

    asyncio.run(report())
    assert never_routed not in core.adapters  # a key this router gave no route for is not kept or heated
    views = {v.id: v for v in core.membership.views()}
    assert views["a"].load == 200  # the router never saw these requests: reported
    assert core.requests == 250 and lookaside.reported == 250  # the unknown worker's outcome is ignored
    assert core.adapters[key].hits == 200
    assert core.adapters[key].replications >= 1  # 200 requests at once: hot, so a copy is asked for
    lookaside.report([Outcome(key, "a", finished=200)])
    assert {v.id: v.load for v in core.membership.views()}["a"] == 0
