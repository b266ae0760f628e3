"""deploy/k8s overlays as one multi-region fleet: exactly one primary region; every other region's store replicates
that primary (its --primary is the address the primary region publishes for its store); every router falls back on
another region's router (the address that region publishes), never its own. The check can fail: each broken copy
below is caught."""

from __future__ import annotations

import copy

import pytest

from adapterfleet.cli.router_serve import fallback_routers
from tests.deploy.k8s_render import OVERLAYS, find, render, resolved
from tests.deploy.shared import assert_catches


def region_wiring(overlays: dict[str, list], cli) -> list[str]:
    """Problems of the fleet that these rendered overlays make together."""
    problems, published, wiring = [], {}, {}
    for name, docs in overlays.items():
        data = _region_data(docs)
        published[name] = (data.get("store-address", ""), data.get("router-address", ""))
        by_section = {s.section: s.args for s in resolved(docs, cli)}
        wiring[name] = (by_section["store"].primary or "", by_section["store"].replicate,
                        fallback_routers(by_section["router"].fallback_router))
    primaries = [n for n, (primary, _, _) in wiring.items() if not primary]
    if len(primaries) != 1:
        return [f"exactly one region must be the primary (a store without --primary), found {primaries}"]
    [primary] = primaries
    for name, (store_addr, router_addr) in published.items():
        if not store_addr or not router_addr:
            problems.append(f"{name}: the region ConfigMap does not publish store-address and router-address")
    for name, (primary_addr, replicate, fallback) in wiring.items():
        if name != primary and primary_addr != published[primary][0]:
            problems.append(f"{name}: --primary={primary_addr} is not the primary region's store "
                            f"({published[primary][0]})")
        if name != primary and replicate not in (None, "lazy", "eager"):
            problems.append(f"{name}: --replicate={replicate}")
        routers = list(fallback)
        others = {published[o][1] for o in published if o != name}
        if not routers:
            problems.append(f"{name}: the router has no --fallback-router: losing this region's workers would "
                            "lose its traffic")
        problems += [f"{name}: --fallback-router={r} is not another region's router ({sorted(others)})"
                     for r in routers if r not in others]
    return problems


@pytest.fixture(scope="module")
def rendered():
    return {name: render(f"overlays/{name}") for name in OVERLAYS}


def test_the_overlays_make_one_primary_and_secondaries_wired_to_it(rendered, cli):
    assert len(rendered) >= 2
    assert region_wiring(rendered, cli) == []


def _region_data(docs) -> dict:
    return find(docs, "ConfigMap", "adapterfleet-region")["data"]


def _no_primary(all_docs):
    for docs in all_docs.values():
        s = find(docs, "Deployment", "adapterfleet-store")["spec"]["template"]["spec"]["containers"][0]
        s["env"] = [e for e in s["env"] if e["name"] != "ADAPTERFLEET_PRIMARY"]


BROKEN = [
    ("two primaries", _no_primary, "exactly one region"),
    ("wrong primary", lambda d: _region_data(d["eu-west-1"]).update(primary="adapterfleet-store:50051"),
     "is not the primary region's store"),
    ("falls back on itself", lambda d: _region_data(d["us-east-1"]).update(
        {"fallback-router": _region_data(d["us-east-1"])["router-address"]}), "is not another region's router"),
    ("no fallback", lambda d: _region_data(d["eu-west-1"]).update({"fallback-router": ""}), "no --fallback-router"),
]


@pytest.mark.parametrize("what,mutate,expect", BROKEN, ids=[b[0] for b in BROKEN])
def test_the_wiring_check_catches(what, mutate, expect, rendered, cli):
    assert_catches(what, region_wiring, copy.deepcopy(rendered), mutate, expect, cli)
