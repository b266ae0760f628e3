"""A rollout walks its steps on real traffic: 50 -> 100 completes on the new version only; at each step the
router's split over 2,000 routing keys is within +-5% of the weights and sticky per key; in-flight requests finish
on the version they started with."""

from __future__ import annotations

from adapterfleet.sdk.rollouts import Rollouts
from adapterfleet.store.client import StoreClient
from adapterfleet.v1 import worker_pb2
from tests.rollout.conftest import Traffic, router_choices, wait_for


def test_50_then_100_completes_with_split_and_stickiness(fleet, push):
    keys = push("acme/steps")
    with Rollouts(fleet.address) as rollouts:
        s = rollouts.start("acme/steps", "prod", to=2, steps="50,100", interval="1s", min_requests=20)
        assert (s.state, s.from_version, s.to_version, s.steps) == ("running", 1, 2, (50, 100))
        wait_for(lambda: rollouts.status("acme/steps", "prod").step == 0, what="step 1")
        paused = rollouts.pause("acme/steps", "prod")
        assert paused.state == "paused" and paused.weights == {1: 50, 2: 50}
        # the split at 50/50 over 2,000 routing keys, and each key sticky
        wait_for(lambda: len(set(router_choices(fleet, "acme/steps@prod", 50))) == 2, what="router saw the move")
        choices = router_choices(fleet, "acme/steps@prod", 2000)
        share = choices.count(keys[1]) / len(choices)
        assert 0.45 <= share <= 0.55, share
        assert router_choices(fleet, "acme/steps@prod", 2000) == choices
        for i in range(0, 40, 4):  # real requests go where the router's choice says, for the same key
            assert fleet.score("acme/steps@prod", routing_key=f"user-{i}").adapter_key == choices[i]
        traffic = Traffic(fleet, "acme/steps@prod")
        try:
            rollouts.resume("acme/steps", "prod")
            done = wait_for(lambda: (s := rollouts.status("acme/steps", "prod")).state == "done" and s, timeout=30,
                            what="done")
        finally:
            traffic.stop()
    assert not traffic.errors
    assert done.weights == {2: 100} and done.step == 1
    with StoreClient(fleet.address) as client:
        assert client.resolve("acme/steps@prod").manifest.version == 2
    assert set(router_choices(fleet, "acme/steps@prod", 200)) == {keys[1]}
    assert [h["kind"] for h in done.history][:1] == ["started"]
    assert "done" in [h["kind"] for h in done.history]
    assert done.gates.new.requests >= 20  # the 50% step was judged on real traffic before promotion


def test_in_flight_requests_finish_on_the_version_they_started_with(fleet, push):
    keys = push("acme/inflight")
    request = worker_pb2.GenerateRequest(adapter="acme/inflight@prod", prompt_ids=[5, 6, 7], max_new_tokens=40,
                                         stop_ids=[127])
    stream = fleet.api.Generate(request, timeout=60)
    first = next(stream)
    assert first.adapter_key == keys[0]
    with Rollouts(fleet.address) as rollouts:
        rollouts.start("acme/inflight", "prod", to=2, steps="100", interval="1s", warm=False)
        wait_for(lambda: rollouts.status("acme/inflight", "prod").state == "done", what="done")
    tokens = list(first.token_ids) + [t for m in stream for t in m.token_ids]
    pinned = worker_pb2.GenerateRequest(adapter=keys[0], prompt_ids=[5, 6, 7], max_new_tokens=40, stop_ids=[127])
    assert tokens == [t for m in fleet.api.Generate(pinned, timeout=60) for t in m.token_ids]
    after = next(fleet.api.Generate(request, timeout=60))
    assert after.adapter_key == keys[1]


def test_metrics_rollout_state_per_alias_and_per_version_series_on_routers(fleet, push):
    from adapterfleet.router.metrics import RouterCollector
    from adapterfleet.store.rollout_metrics import RolloutCollector

    keys = push("acme/metrics")
    for i in range(5):
        fleet.score("acme/metrics@prod", routing_key=f"m{i}")
    with Rollouts(fleet.address) as rollouts:
        rollouts.start("acme/metrics", "prod", to=2, steps="100", interval="1s", warm=False)
        wait_for(lambda: rollouts.status("acme/metrics", "prod").state == "done", what="done")
    wait_for(lambda: any(r.name == "acme/metrics" and r.state == "done" for r in fleet.store.controller.view),
             what="the controller's view")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in RolloutCollector(fleet.store.controller).collect() for s in fam.samples}
    labels = (("alias", "prod"), ("name", "acme/metrics"))
    assert samples[("adapterfleet_rollout_state", tuple(sorted((*labels, ("state", "done")))))] == 1.0
    assert samples[("adapterfleet_rollout_state", tuple(sorted((*labels, ("state", "running")))))] == 0.0
    assert samples[("adapterfleet_rollout_step", labels)] == 1
    assert samples[("adapterfleet_rollout_new_version_weight", tuple(sorted((*labels, ("version", "2")))))] == 100
    router = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in RouterCollector(fleet.router).collect() for s in fam.samples}
    assert router[("adapterfleet_router_version_requests_total", (("key", keys[0]),))] >= 5
    assert router[("adapterfleet_router_version_first_answer_seconds_count", (("key", keys[0]),))] >= 5
