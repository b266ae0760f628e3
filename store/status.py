"""Where a store stands (the Status RPC): its role, its own event stream and, in a secondary region, how far it
has replicated from its primary. A wire type both sides use, with its conversions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from adapterfleet.v1 import store_pb2

PRIMARY, SECONDARY = "primary", "secondary"


@dataclass(frozen=True)
class StoreStatusReport:
    role: str = PRIMARY
    region: str = ""
    primary: str = ""             # a secondary's primary address
    replicate: str = ""           # a secondary's blob copying: "lazy" | "eager"
    cursor: str = ""              # the last primary event applied
    lag_events: int = 0
    lag_seconds: float = 0.0
    blobs_pending: int = 0
    connected: bool = False
    resyncs: int = 0
    events_applied: int = 0
    last_error: str = ""
    last_event: str = "0-0"       # this store's own stream
    first_event: str = "0-0"
    entries_added: int = 0        # events ever added to its stream
    stream_length: int = 0        # events it still keeps
    events_after: int = 0         # events after the asked-for cursor (``since``)
    oldest_after_time: float = 0.0
    checked_at: float = 0.0
    last_resync: str = ""         # why and when it last resynchronised completely

    def to_dict(self) -> dict:
        return asdict(self)


def status_to_pb(s: StoreStatusReport) -> store_pb2.StoreStatus:
    return store_pb2.StoreStatus(**asdict(s))


def status_from_pb(pb: store_pb2.StoreStatus) -> StoreStatusReport:
    return StoreStatusReport(**{f: getattr(pb, f) for f in StoreStatusReport.__dataclass_fields__})
