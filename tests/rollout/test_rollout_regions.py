"""--regions a,b on one store with region-labelled routers: the first region walks its steps (a regional override
of the alias that only callers naming that region resolve) while the other stays on the old version; then the
next; at the end the alias itself is the new version and the overrides are gone."""

from __future__ import annotations

from adapterfleet.sdk.rollouts import Rollouts
from adapterfleet.store.client import StoreClient
from adapterfleet.v1 import store_pb2
from tests.rollout.conftest import router_choices, wait_for


def resolve_in(client: StoreClient, ref: str, region: str, key: str) -> int:
    r = client._stub.Resolve(store_pb2.ResolveRequest(ref=ref, routing_key=key, region=region), timeout=10)
    return r.manifest.version


def test_region_by_region(fleet, push):
    keys = push("acme/regions")
    region = fleet.router_region  # the router's own region ("local") goes first
    with Rollouts(fleet.address) as rollouts, StoreClient(fleet.address) as client:
        rollouts.start("acme/regions", "prod", to=2, steps="50,100", interval="2s", min_requests=0, warm=False,
                       regions=[region, "eu"])
        s = wait_for(lambda: (s := rollouts.status("acme/regions", "prod")).step == 0 and s, what="first step")
        assert s.region == region and s.weights == {1: 50, 2: 50}
        paused = rollouts.pause("acme/regions", "prod")
        # this region's router splits 50/50; callers in the other region still get v1 only
        wait_for(lambda: len(set(router_choices(fleet, "acme/regions@prod", 50))) == 2, what="router sees it")
        share = router_choices(fleet, "acme/regions@prod", 2000).count(keys[1]) / 2000
        assert 0.45 <= share <= 0.55, share
        assert {resolve_in(client, "acme/regions@prod", "eu", f"k{i}") for i in range(40)} == {1}
        assert client.resolve("acme/regions@prod").alias_targets == ((1, 100),)  # the alias itself has not moved
        assert paused.state == "paused"
        rollouts.resume("acme/regions", "prod")
        wait_for(lambda: rollouts.status("acme/regions", "prod").region == "eu", what="second region", timeout=30)
        s = rollouts.pause("acme/regions", "prod")
        assert s.region == "eu" and s.state == "paused"
        assert {resolve_in(client, "acme/regions@prod", region, f"k{i}") for i in range(40)} == {2}  # done here
        seen_in_eu = {resolve_in(client, "acme/regions@prod", "eu", f"k{i}") for i in range(200)}
        assert seen_in_eu == set(s.weights), (seen_in_eu, s.weights)  # the other region follows its own steps
        rollouts.resume("acme/regions", "prod")
        done = wait_for(lambda: (s := rollouts.status("acme/regions", "prod")).state == "done" and s, timeout=30,
                        what="done")
        assert done.weights == {2: 100}
        steps = [h["detail"].split(":")[0] for h in done.history if h["kind"] in ("step", "done")]
        assert steps == [f"step 1 of 2 in {region}", f"step 2 of 2 in {region}", "step 1 of 2 in eu",
                         "step 2 of 2 in eu"], steps
        _, aliases = client.list_versions("acme/regions")
        assert aliases == {"prod": ((2, 100),)}  # the overrides are gone
