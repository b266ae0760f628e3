"""What a worker holds and how it is doing, as plain values: the answers of the Worker service's admin calls
(LoadAdapter, UnloadAdapter, Pin, ListResident, Stats) that :class:`~adapterfleet.sdk.fleet.FleetClient` and
:class:`~adapterfleet.sdk.fleet_aio.AsyncFleetClient` make, and the requests they send.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.common.tiers import ACTIVE, CACHE_TIERS, tier_from_pb, tier_to_pb
from adapterfleet.v1 import worker_pb2


@dataclass(frozen=True)
class AdapterState:
    """One adapter version a worker holds: ``tier`` is "active" (in a slot on the device), "host", "disk" or
    "loading"; ``slot`` is -1 outside the active tier; ``in_use`` counts requests running on it now."""

    key: str
    tier: str
    bytes: int
    pinned: bool
    in_use: int
    slot: int
    hits: int


@dataclass(frozen=True)
class WorkerStats:
    """One worker's counters and what it holds (``adapters``); ``tokens_per_second`` is over the last minute."""

    base_model: str
    fingerprint: str
    region: str
    queue_depth: int
    running: int
    requests_total: int
    tokens_generated: int
    tokens_per_second: float
    max_slots: int
    active_bytes: int
    host_bytes: int
    disk_bytes: int
    cold_loads: int
    evictions: int
    adapters: tuple[AdapterState, ...]


def state_of(pb: worker_pb2.AdapterState) -> AdapterState:
    return AdapterState(pb.key, tier_from_pb(pb.tier), pb.bytes, pb.pinned, pb.in_use, pb.slot, pb.hits)


def worker_stats_of(pb: worker_pb2.WorkerStats) -> WorkerStats:
    return WorkerStats(
        base_model=pb.base_model, fingerprint=pb.fingerprint, region=pb.region, queue_depth=pb.queue_depth,
        running=pb.running, requests_total=pb.requests_total, tokens_generated=pb.tokens_generated,
        tokens_per_second=pb.tokens_per_second, max_slots=pb.max_slots, active_bytes=pb.active_bytes,
        host_bytes=pb.host_bytes, disk_bytes=pb.disk_bytes, cold_loads=pb.cold_loads, evictions=pb.evictions,
        adapters=tuple(state_of(a) for a in pb.adapters))


def load_request(ref: str, *, pin: bool, tier: str) -> worker_pb2.LoadAdapterRequest:
    """``tier``: where the worker should hold it, "active" (the default), "host" or "disk"."""
    if tier not in CACHE_TIERS:
        raise InvalidArgument(f"tier {tier!r} is not one of {', '.join(CACHE_TIERS)}")
    return worker_pb2.LoadAdapterRequest(ref=ref, pin=pin, tier=tier_to_pb(tier or ACTIVE))



def wrong_service(address: str, needs: str) -> str:
    """The message for UNIMPLEMENTED, whose gRPC text is only "Method not found!"."""
    other = "worker" if needs == "router" else "router"
    return (f"{address} does not implement this call: it needs a {needs}, and that address looks like a {other} "
            f"or another server (`adapterfleet {needs} ... --{needs} ADDR`)")
