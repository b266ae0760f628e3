"""Where a worker holds an adapter version: the tier names every service uses, and their wire form.

Python code, logs, metrics labels, JSON output and the registry's Redis records use the lowercase names; the wire
carries the proto enum ``adapterfleet.v1.Tier``. The conversions live here and nowhere else.
"""

from __future__ import annotations

from adapterfleet.v1 import common_pb2

ACTIVE, HOST, DISK, LOADING = "active", "host", "disk", "loading"
TIERS = (ACTIVE, HOST, DISK, LOADING)    # best first: placement prefers a holder in an earlier tier
CACHE_TIERS = (ACTIVE, HOST, DISK)       # the tiers that hold bytes (and have budgets)

_TO_PB = {ACTIVE: common_pb2.TIER_ACTIVE, HOST: common_pb2.TIER_HOST, DISK: common_pb2.TIER_DISK,
          LOADING: common_pb2.TIER_LOADING}
_FROM_PB: dict[int, str] = {v: k for k, v in _TO_PB.items()}


def tier_to_pb(name: str) -> common_pb2.Tier:
    """``"active"`` -> ``TIER_ACTIVE``; ``""`` -> ``TIER_UNSPECIFIED``."""
    if not name:
        return common_pb2.TIER_UNSPECIFIED
    try:
        return _TO_PB[name]
    except KeyError:
        raise ValueError(f"unknown tier {name!r}; tiers are {', '.join(TIERS)}") from None


def tier_from_pb(value: int) -> str:
    """``TIER_ACTIVE`` -> ``"active"``; ``TIER_UNSPECIFIED`` (or a value this build does not know) -> ``""``."""
    return _FROM_PB.get(value, "")
