"""The placement policy: affinity, bounded load, rendezvous stability, tiers, regions, retries, heat and copies."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from adapterfleet.router.placement import Placement, PlacementConfig, WorkerView

KEY = "team/summarise@sha256:" + "ab" * 32


def worker(i: int, load: float = 0, resident: dict | None = None, *, region: str = "eu", capacity: int = 64,
           healthy: bool = True) -> WorkerView:
    return WorkerView(f"w{i}", f"10.0.0.{i}:7000", region, float(load), capacity, resident or {}, healthy)


def fleet(n: int = 8, **kw) -> list[WorkerView]:
    return [worker(i, **kw) for i in range(n)]


def ids(ws: list[WorkerView]) -> list[str]:
    return [w.id for w in ws]


def keys(n: int) -> list[str]:
    return [f"team/a{i}@sha256:{i:064x}" for i in range(n)]


def with_load(ws: list[WorkerView], **loads: float) -> list[WorkerView]:
    return [WorkerView(w.id, w.address, w.region, loads.get(w.id, w.load), w.capacity, w.resident, w.healthy)
            for w in ws]


@pytest.fixture
def p() -> Placement:
    return Placement(PlacementConfig())


# --- affinity and bounded load ------------------------------------------------------------------------------------

def test_holder_is_picked_while_within_the_bound(p):
    ws = fleet(load=4)
    ws[5] = worker(5, load=5, resident={KEY: "active"})      # busier than the rest, but within (1.25 * 5.125) - 1
    for _ in range(3):
        assert p.choose(KEY, ws)[0].id == "w5"


def test_holder_above_the_bound_is_skipped_and_the_pick_is_within_it(p):
    ws = fleet(load=4)
    ws[5] = worker(5, load=20, resident={KEY: "active"})
    avg = sum(w.load for w in ws) / len(ws)
    order = p.choose(KEY, ws)
    assert order[0].id != "w5"
    assert order[0].load + 1 <= 1.25 * (avg + 1)
    assert order[-1].id == "w5"                              # still a last resort for retries


def test_the_bound_has_room_for_one_request_on_an_idle_fleet():
    p = Placement(PlacementConfig(eps=0.0))
    ws = fleet(load=0)
    ws[2] = worker(2, load=1, resident={KEY: "active"})     # 1 + 1 <= (1 + 0) * (1/8 + 1)? no: skipped
    assert p.choose(KEY, ws)[0].id != "w2"
    ws = fleet(load=0)
    ws[2] = worker(2, load=0, resident={KEY: "active"})
    assert p.choose(KEY, ws)[0].id == "w2"


def test_cold_key_goes_to_its_rendezvous_first_and_spills_to_the_same_second(p):
    ws = fleet(load=3)
    home, second = ids(p.rendezvous_order(KEY, ws))[:2]
    assert p.choose(KEY, ws)[0].id == home
    busy = with_load(ws, **{home: 40})
    assert p.choose(KEY, busy)[0].id == second
    assert p.choose(KEY, busy)[0].id == second               # stable: the overflow keeps going to one worker


def test_workers_over_the_bound_come_last_least_loaded_first():
    # With eps >= 0 the least loaded worker is always within the bound, so a pick never fails.
    p = Placement(PlacementConfig(eps=0.0))
    ws = [worker(0, 100), worker(1, 90), worker(2, 96, resident={KEY: "active"})]
    order = p.choose(KEY, ws)
    assert order[0].id == "w1"                               # 90 <= avg 95.3: the only one within the bound
    assert ids(order[1:]) == ["w2", "w0"]                    # the rest least loaded first, holder or not


def test_candidates_are_every_eligible_worker_once(p):
    ws = fleet(load=2)
    ws[1] = worker(1, 2, {KEY: "host"})
    ws[6] = worker(6, 30, {KEY: "active"})
    order = p.choose(KEY, ws)
    assert sorted(ids(order)) == sorted(ids(ws))


# --- rendezvous stability --------------------------------------------------------------------------------------------

def placement_map(p: Placement, ks: list[str], ws: list[WorkerView]) -> dict[str, str]:
    return {k: p.choose(k, ws)[0].id for k in ks}


def test_removing_a_worker_moves_only_its_keys(p):
    ks = keys(2000)
    ws = fleet(8)
    before = placement_map(p, ks, ws)
    after = placement_map(p, ks, [w for w in ws if w.id != "w3"])
    moved = {k for k in ks if before[k] != after[k]}
    assert moved == {k for k in ks if before[k] == "w3"}
    assert 150 < len(moved) < 350                            # ~1/8 of 2000


def test_adding_a_worker_moves_about_one_in_n_and_only_to_it(p):
    ks = keys(2000)
    ws = fleet(8)
    before = placement_map(p, ks, ws)
    after = placement_map(p, ks, [*ws, worker(8)])
    moved = [k for k in ks if before[k] != after[k]]
    assert {after[k] for k in moved} == {"w8"}
    assert 0.07 < len(moved) / len(ks) < 0.16               # ~1/9


def test_keys_spread_over_workers_in_proportion_to_capacity(p):
    ks = keys(4000)
    ws = [worker(0, capacity=128)] + [worker(i, capacity=64) for i in range(1, 4)]
    counts = Counter(placement_map(p, ks, ws).values())
    assert counts["w0"] / counts["w1"] == pytest.approx(2.0, rel=0.2)


def test_tie_breaks_do_not_depend_on_input_order(p):
    ws = fleet(8, load=1)
    assert ids(p.choose(KEY, ws)) == ids(p.choose(KEY, ws[::-1]))
    assert ids(Placement(PlacementConfig()).choose(KEY, ws)) == ids(p.choose(KEY, ws))


# --- tiers ----------------------------------------------------------------------------------------------------------

def test_best_tier_first_then_least_loaded(p):
    ws = [worker(0, 1, {KEY: "loading"}), worker(1, 1, {KEY: "disk"}), worker(2, 3, {KEY: "host"}),
          worker(3, 2, {KEY: "active"}), worker(4, 1, {KEY: "active"}), worker(5, 6)]   # w5: over the bound
    assert ids(p.choose(KEY, ws)) == ["w4", "w3", "w2", "w1", "w0", "w5"]


def test_retry_order_is_holders_then_rendezvous(p):
    ws = fleet(6, load=1)
    ws[4] = worker(4, 1, {KEY: "disk"})
    order = p.choose(KEY, ws)
    assert order[0].id == "w4"
    rest = [w for w in p.rendezvous_order(KEY, ws) if w.id != "w4"]
    assert ids(order[1:]) == ids(rest)


# --- regions, health, exclude -------------------------------------------------------------------------------------

def test_own_region_first_even_when_another_region_holds_the_key(p):
    ws = [worker(0, 5, region="eu"), worker(1, 5, region="eu"),
          worker(2, 0, {KEY: "active"}, region="us"), worker(3, 0, region="us")]
    order = p.choose(KEY, ws, region="eu")
    assert [w.region for w in order] == ["eu", "eu", "us", "us"]
    assert order[2].id == "w2"                                # the failover tail is ordered by the same rules


def test_region_failover_when_no_own_region_worker_is_healthy(p):
    ws = [worker(0, region="eu", healthy=False), worker(1, region="eu", healthy=False),
          worker(2, 3, region="us"), worker(3, 1, {KEY: "active"}, region="us")]
    order = p.choose(KEY, ws, region="eu")
    assert ids(order) == ["w3", "w2"]


def test_region_failover_when_own_region_is_excluded(p):
    ws = [worker(0, region="eu"), worker(1, region="us")]
    assert ids(p.choose(KEY, ws, region="eu", exclude={"w0"})) == ["w1"]


def test_exclude_gives_the_next_candidate(p):
    ws = fleet(8, load=2)
    ws[3] = worker(3, 2, {KEY: "active"})
    first = p.choose(KEY, ws)
    retry = p.choose(KEY, ws, exclude=[first[0].id])
    assert first[0].id == "w3"
    assert ids(retry) == ids(first[1:])
    assert ids(p.choose(KEY, ws, exclude=ids(first[:2]))) == ids(first[2:])


def test_unhealthy_workers_are_never_candidates(p):
    ws = fleet(4, load=5)
    ws[1] = worker(1, 0, {KEY: "active"}, healthy=False)
    for key in (KEY, "", "other@sha256:" + "00" * 32):
        assert "w1" not in ids(p.choose(key, ws))
    assert p.choose(KEY, [worker(0, healthy=False)]) == []
    assert p.choose(KEY, []) == []


def test_base_model_requests_go_to_the_least_loaded(p):
    ws = [worker(0, 4), worker(1, 2, {KEY: "active"}), worker(2, 7), worker(3, 1)]
    assert ids(p.choose("", ws)) == ["w3", "w1", "w0", "w2"]


# --- heat and copies ----------------------------------------------------------------------------------------------

def steady(p: Placement, key: str, rate: float, seconds: float, start: float = 0.0) -> float:
    n = int(rate * seconds)
    for i in range(n):
        p.record(key, start + i / rate)
    return start + n / rate


def test_heat_is_a_decayed_rate():
    p = Placement(PlacementConfig(heat_half_life_s=10.0))
    assert p.heat(KEY, 0.0) == 0.0
    p.record(KEY, 100.0)
    one = p.heat(KEY, 100.0)
    assert one == pytest.approx(math.log(2) / 10.0)
    assert p.heat(KEY, 110.0) == pytest.approx(one / 2)
    assert p.heat(KEY, 130.0) == pytest.approx(one / 8)
    end = steady(p, "steady", 50.0, 200.0)
    assert p.heat("steady", end) == pytest.approx(50.0, rel=0.05)


def test_out_of_order_records_still_count():
    p = Placement(PlacementConfig())
    p.record(KEY, 10.0)
    p.record(KEY, 9.0)
    assert p.heat(KEY, 10.0) == pytest.approx(2 * math.log(2) / 10.0)


def test_wanted_copies_follow_heat_up_to_the_cap():
    p = Placement(PlacementConfig(hot_requests_per_copy=20.0, max_copies=4))
    assert p.wanted_copies(KEY, 0.0) == 1
    assert p.wanted_copies("warm", steady(p, "warm", 15.0, 100.0)) == 1
    assert p.wanted_copies("hot", steady(p, "hot", 50.0, 100.0)) == 3
    assert p.wanted_copies("blazing", steady(p, "blazing", 500.0, 100.0)) == 4
    end = steady(p, "fading", 50.0, 100.0)
    assert p.wanted_copies("fading", end + 60.0) == 1          # six half-lives later


def test_hot_key_gets_copies_up_to_max_copies_on_rendezvous_order():
    p = Placement(PlacementConfig(hot_requests_per_copy=20.0, max_copies=4))
    ws = fleet(8, load=3)
    order = p.rendezvous_order(KEY, ws)
    holder = order[0]
    ws = [worker(int(w.id[1:]), 3, {KEY: "active"} if w.id == holder.id else {}) for w in ws]
    now = steady(p, KEY, 200.0, 60.0)
    add = p.replicas_to_add(KEY, ws, now)
    assert ids(add) == ids(order[1:4])                        # 3 more: 4 copies in all
    assert p.replicas_to_add(KEY, ws, now) == []              # asked for already; not asked for twice


def test_copies_skip_workers_over_the_bound_and_count_loading_holders():
    p = Placement(PlacementConfig(hot_requests_per_copy=20.0, max_copies=3))
    ws = fleet(8, load=3)
    order = ids(p.rendezvous_order(KEY, ws))
    loads = {order[1]: 50}
    resident = {order[0]: {KEY: "active"}, order[3]: {KEY: "loading"}}
    ws = [worker(int(w[1:]), loads.get(w, 3), resident.get(w)) for w in order]
    now = steady(p, KEY, 200.0, 60.0)
    assert ids(p.replicas_to_add(KEY, ws, now)) == [order[2]]  # 3 wanted: active + loading + one new


def test_pending_copy_is_asked_for_again_after_it_lapses():
    p = Placement(PlacementConfig(hot_requests_per_copy=20.0, max_copies=2, replica_pending_s=5.0))
    ws = fleet(4, load=1)
    ws[0] = worker(0, 1, {KEY: "active"})
    now = steady(p, KEY, 100.0, 60.0)
    first = p.replicas_to_add(KEY, ws, now)
    assert len(first) == 1
    later = steady(p, KEY, 100.0, 6.0, start=now)
    assert ids(p.replicas_to_add(KEY, ws, later)) == ids(first)   # never loaded: ask again


def test_cold_and_base_keys_get_no_copies(p):
    ws = fleet(4)
    p.record(KEY, 0.0)
    assert p.replicas_to_add(KEY, ws, 0.0) == []
    steady(p, "", 500.0, 30.0)
    assert p.replicas_to_add("", ws, 30.0) == []


def test_copies_stay_in_the_region():
    p = Placement(PlacementConfig(hot_requests_per_copy=10.0, max_copies=4))
    ws = [worker(0, 1, {KEY: "active"}, region="eu"), worker(1, 1, region="eu"),
          worker(2, 0, region="us"), worker(3, 0, region="us")]
    now = steady(p, KEY, 200.0, 60.0)
    assert ids(p.replicas_to_add(KEY, ws, now, region="eu")) == ["w1"]


@pytest.mark.parametrize("bad, message", [
    ({"eps": -0.1}, "eps is -0.1"),
    ({"hot_requests_per_copy": 0}, "hot_requests_per_copy is 0"),
    ({"max_copies": 0}, "max_copies is 0"),
    ({"heat_half_life_s": 0}, "heat_half_life_s is 0"),
])
def test_config_rejects_nonsense(bad, message):
    with pytest.raises(ValueError, match=message):
        PlacementConfig(**bad)
