"""A worker's registry record and its two encodings: the wire (``WorkerInfo``) and the registry's Redis JSON.

Shared by both sides: the registry (store process) stores records, workers announce them, routers read them.
Tiers are the lowercase names of :mod:`adapterfleet.common.tiers` in Python and in Redis, the proto enum on the wire.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from adapterfleet.common.tiers import tier_from_pb, tier_to_pb
from adapterfleet.v1 import registry_pb2


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    address: str
    region: str = "local"
    capacity: int = 0
    load: float = 0.0
    adapters: dict[str, str] = field(default_factory=dict)  # key -> tier name ("active" | "host" | ...)
    fingerprint: str = ""
    base_model: str = ""
    draining: bool = False
    announced_by: str = ""  # the id of the verified token that announced it (set by the registry; "": auth off)


def record_from_pb(pb: registry_pb2.WorkerInfo) -> WorkerRecord:
    return WorkerRecord(id=pb.id, address=pb.address, region=pb.region, capacity=pb.capacity, load=pb.load,
                        adapters={a.key: tier_from_pb(a.tier) for a in pb.adapters}, fingerprint=pb.fingerprint,
                        base_model=pb.base_model, draining=pb.draining, announced_by=pb.announced_by)


def record_to_pb(r: WorkerRecord, ttl_seconds: float = 0.0) -> registry_pb2.WorkerInfo:
    return registry_pb2.WorkerInfo(
        id=r.id, address=r.address, region=r.region, capacity=r.capacity, load=r.load,
        adapters=[registry_pb2.ResidentAdapter(key=k, tier=tier_to_pb(t)) for k, t in sorted(r.adapters.items())],
        fingerprint=r.fingerprint, base_model=r.base_model, draining=r.draining, ttl_seconds=ttl_seconds,
        announced_by=r.announced_by)


def record_to_json(r: WorkerRecord) -> str:
    return json.dumps(asdict(r), sort_keys=True)


def record_from_json(raw: str | bytes) -> WorkerRecord:
    """A record as :func:`record_to_json` wrote it (tiers by name, as they have always been stored)."""
    return WorkerRecord(**json.loads(raw))
