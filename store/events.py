"""The store's change events: what Watch streams to routers, workers and clients (a wire type both sides use)."""

from __future__ import annotations

from dataclasses import dataclass

from adapterfleet.store.targets import Targets

EVENT_TYPES = ("VERSION_PUSHED", "ALIAS_CHANGED", "ALIAS_DELETED", "VERSION_YANKED")


@dataclass(frozen=True)
class StoreEvent:
    cursor: str
    type: str  # one of EVENT_TYPES (the names of store_pb2.Event.Type)
    name: str
    version: int
    digest: str
    alias: str
    targets: Targets
    time: float
