"""What the Status RPC answers (server side): the store's role and event stream, and a secondary's replication."""

from __future__ import annotations

from dataclasses import replace

from adapterfleet.store.events import check_cursor
from adapterfleet.store.replica_index import ReplicaIndex
from adapterfleet.store.replication import Follower
from adapterfleet.store.status import PRIMARY, StoreStatusReport


class StatusSource:
    def __init__(self, region: str, index: ReplicaIndex, follower: Follower | None = None):
        self.region = region
        self.index = index
        self.follower = follower

    async def report(self, since: str = "") -> StoreStatusReport:
        check_cursor(since)
        info = await self.index.stream_info()
        after, oldest = await self.index.events_after(since) if since not in ("", "$") else (0, 0.0)
        if self.follower is None:
            base = StoreStatusReport(role=PRIMARY)
        else:
            base = replace(self.follower.report(), blobs_pending=await self.index.pending_count())
        return replace(base, region=self.region, last_event=info.last, first_event=info.first,
                       entries_added=info.entries_added, stream_length=info.length, events_after=after,
                       oldest_after_time=oldest)
