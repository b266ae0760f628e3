"""docker-compose.yml's `two-regions` profile runs a second region beside the default one: its own store (a
secondary replicating the default store, with its own Redis and bucket), a worker and a router of its own that falls
back on the default region's router. The check can fail: each broken copy below is caught."""

from __future__ import annotations

import copy
from urllib.parse import urlsplit

import pytest

from adapterfleet.cli.router_serve import fallback_routers
from tests.deploy.compose_files import depends, fleet, load_compose
from tests.deploy.shared import assert_catches, split_addr

PROFILE = "two-regions"


def two_region_problems(compose: dict, cli) -> list[str]:
    """The profile's fleet: two regions, one primary store, the secondary wired to it, each region's parts apart."""
    both = fleet(compose, cli, PROFILE)
    stores = {n: a for n, (role, a) in both.items() if role == "store"}
    regions = {a.region for a in stores.values()}
    problems = []
    if len(stores) != 2 or len(regions) != 2:
        return [f"expected two stores in two regions, found {sorted(stores)} in {sorted(regions)}"]
    primaries = [n for n, a in stores.items() if not a.primary]
    if len(primaries) != 1:
        return [f"exactly one store must be the primary (no --primary), found {primaries}"]
    [primary] = primaries
    [secondary] = [n for n in stores if n != primary]
    sa, pa = stores[secondary], stores[primary]
    if split_addr(sa.primary) != (primary, pa.port):
        problems.append(f"{secondary}: --primary={sa.primary} is not {primary}:{pa.port}")
    if urlsplit(sa.redis_url).hostname == urlsplit(pa.redis_url).hostname:
        problems.append(f"{secondary} shares its Redis with {primary}: each region needs its own")
    if sa.bucket == pa.bucket:
        problems.append(f"{secondary} shares bucket {sa.bucket} with {primary}: each region needs its own")
    if primary not in depends(compose["services"][secondary]):
        problems.append(f"{secondary} does not wait for its primary {primary}")
    routers = {n: a for n, (role, a) in both.items() if role == "router"}
    store_region = {(n, a.port): a.region for n, a in stores.items()}
    for name, (role, args) in both.items():
        if role in ("worker", "router"):
            region = store_region.get(split_addr(args.store or ""))
            if region != args.region:
                problems.append(f"{name} (region {args.region}) uses the store of region {region}")
    for name, args in routers.items():
        if args.region != sa.region:
            continue
        fallbacks = [split_addr(a) for a in fallback_routers(args.fallback_router)]
        others = {(n, a.port) for n, a in routers.items() if a.region != args.region}
        if not fallbacks or not set(fallbacks) <= others:
            problems.append(f"{name}: --fallback-router={args.fallback_router} is not another region's router "
                            f"({sorted(others)})")
    return problems


def test_the_two_regions_profile_is_a_primary_and_a_secondary_region(cli):
    compose = load_compose()
    assert two_region_problems(compose, cli) == []
    default = {n for n, (role, _) in fleet(compose, cli).items()}
    assert not {"store-b", "worker-b1", "router-b"} & default  # `docker compose up` alone: one region


def _arg(service: str, flag: str, value: str):
    def mutate(compose):
        cmd = compose["services"][service]["command"]
        cmd[:] = [a for a in cmd if not a.startswith(f"--{flag}=")] + ([f"--{flag}={value}"] if value else [])
    return mutate


BROKEN = [
    ("no primary", _arg("store-b", "primary", ""), "exactly one store"),
    ("wrong primary", _arg("store-b", "primary", "store:50052"), "is not store:50051"),
    ("shared Redis", _arg("store-b", "redis-url", "redis://redis:6379/0"), "shares its Redis"),
    ("shared bucket", _arg("store-b", "bucket", "adapterfleet"), "shares bucket"),
    ("fallback on itself", _arg("router-b", "fallback-router", "router-b:50071"), "is not another region's router"),
    ("worker on the other region's store", _arg("worker-b1", "store", "store:50051"), "uses the store of region"),
]


@pytest.mark.parametrize("what,mutate,expect", BROKEN, ids=[b[0] for b in BROKEN])
def test_the_two_regions_check_catches(what, mutate, expect, cli):
    assert_catches(what, two_region_problems, copy.deepcopy(load_compose()), mutate, expect, cli)
