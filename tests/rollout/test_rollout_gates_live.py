"""Gates and warm-before-switch on a real fleet: a version that fails at load is rolled back on its own (by the
router-reported figures, or at once by the warm), warm-before-switch leaves no cold load on the request path, and a
manual move of the alias stops the rollout with a clear reason."""

from __future__ import annotations

from adapterfleet.sdk.fleet import FleetClient
from adapterfleet.sdk.rollouts import Rollouts
from adapterfleet.store.client import StoreClient
from tests.rollout.conftest import Traffic, registry_holders, wait_for


def finished(rollouts, name: str, timeout: float = 30.0):
    try:
        return wait_for(lambda: (s := rollouts.status(name, "prod")).state not in ("running", "paused") and s,
                        timeout=timeout, what=f"{name} finished")
    except AssertionError as err:
        raise AssertionError(f"{err}: {rollouts.status(name, 'prod')}") from None


def test_a_version_that_fails_at_load_is_rolled_back_by_its_traffic(fleet, push):
    push("acme/bad")
    traffic = Traffic(fleet, "acme/bad@prod")
    try:
        with Rollouts(fleet.address) as rollouts:
            interval = 20.0
            rollouts.start("acme/bad", "prod", to=3, steps="50,100", interval=interval, min_requests=10,
                           warm=False)
            s = finished(rollouts, "acme/bad")
    finally:
        traffic.stop()
    assert s.state == "rolled_back", s
    assert "failed_precondition" in s.reason and "v3" in s.reason, s.reason
    assert s.weights == {1: 100}
    times = {h["kind"]: h["time"] for h in s.history}
    assert times["rolled_back"] - times["step"] < 2 * interval  # within two windows of the step, not after it
    assert s.gates.new.error_classes.get("failed_precondition", 0) >= 10
    assert "FAILED_PRECONDITION" in traffic.errors  # the version failed for callers: that is what was measured
    with StoreClient(fleet.address) as client:
        assert client.resolve("acme/bad@prod").manifest.version == 1
    # routers count per version: the failures are on v3's key, with their class
    bad_key = next(k for k in fleet.router.versions.totals if k.startswith("acme/bad@") and
                   fleet.router.versions.totals[k].errors)
    assert fleet.router.versions.totals[bad_key].errors["failed_precondition"] >= 10


def test_warm_before_switch_refuses_a_version_that_does_not_fit_before_any_request_meets_it(fleet, push):
    keys = push("acme/badwarm")
    with FleetClient(fleet.workers[0].address) as w0:  # v1 in a slot: the warm loads v3 into one, and it is refused
        w0.load_adapter(keys[0], tier="active")
    wait_for(lambda: registry_holders(fleet, keys[0]) >= 1, what="v1 announced")
    with Rollouts(fleet.address) as rollouts:
        rollouts.start("acme/badwarm", "prod", to=3, steps="50,100", interval="10s", min_requests=10)
        s = finished(rollouts, "acme/badwarm")
    assert s.state == "rolled_back", s  # the whole status: its warm note says what each worker answered
    assert "while warming" in s.reason and "FAILED_PRECONDITION" in s.reason, s.reason
    assert "step" not in [h["kind"] for h in s.history]  # no traffic was ever sent to v3
    assert s.weights == {1: 100}
    assert not fleet.holders(keys[2])


def test_warm_before_switch_leaves_no_cold_load_on_the_request_path(fleet, push):
    keys = push("acme/warm")
    with FleetClient(fleet.workers[0].address) as w0, FleetClient(fleet.workers[1].address) as w1:
        w0.load_adapter(keys[0], tier="active")
        w1.load_adapter(keys[0], tier="host")
    wait_for(lambda: registry_holders(fleet, keys[0]) == 2, what="registry")
    before = [(w.core.cache.stats.cold_loads, w.core.cache.stats.misses) for w in fleet.workers]
    with Rollouts(fleet.address) as rollouts:
        rollouts.start("acme/warm", "prod", to=2, steps="50,100", interval="30s", min_requests=10)
        s = wait_for(lambda: (s := rollouts.status("acme/warm", "prod")).step == 0 and s, what="step 1")
        assert "resident on 2 of 2" in s.warm_note, s.warm_note
        # each worker that holds v1 loaded v2 once; the one holding v1 in a slot holds v2 in a slot too
        assert set(fleet.holders(keys[1])) == set(fleet.holders(keys[0]))
        assert fleet.holders(keys[1])[fleet.workers[0].address] == "active"
        assert [w.core.cache.stats.cold_loads for w in fleet.workers] == [c + 1 for c, _ in before]
        misses = [w.core.cache.stats.misses for w in fleet.workers]
        for i in range(60):
            fleet.score("acme/warm@prod", routing_key=f"u{i}")
        # no request waited for a load, and nothing was fetched on the request path
        assert [w.core.cache.stats.cold_loads for w in fleet.workers] == [c + 1 for c, _ in before]
        # the active-tier holder takes the traffic (best tier first) and never waited for a load
        assert fleet.workers[0].core.cache.stats.misses == misses[0]
        rollouts.abort("acme/warm", "prod")


def test_a_manual_move_of_the_alias_aborts_the_rollout_with_the_reason(fleet, push):
    push("acme/manual")
    with Rollouts(fleet.address) as rollouts, StoreClient(fleet.address) as client:
        rollouts.start("acme/manual", "prod", to=2, steps="25,100", interval="30s", warm=False)
        wait_for(lambda: rollouts.status("acme/manual", "prod").step == 0, what="step 1")
        client.set_alias("acme/manual", "prod", ((1, 90), (2, 10)))
        s = finished(rollouts, "acme/manual")
        assert s.state == "aborted"
        assert "moved by someone else to 1:90,2:10" in s.reason, s.reason
        assert client.resolve("acme/manual@prod").alias_targets == ((1, 90), (2, 10))  # left as the operator set it
