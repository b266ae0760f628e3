"""The trusted registry, as a router sees it: with auth on, only records a verified worker token announced count.

The store's registry accepts an announcement only from a ``worker``-scoped token, for the worker id bound in it,
and stamps the record with that token's id (``announced_by``); a record without one (written while the registry ran
without auth, or straight into Redis) or whose token was revoked since is not routed to.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from adapterfleet.common.auth import Revocations
from adapterfleet.store.workers import WorkerRecord

log = logging.getLogger("adapterfleet.router")
Source = Callable[[], Awaitable[list[WorkerRecord]]]


class AttributedOnly:
    """A registry source that drops the records it cannot attribute to a live worker token."""

    def __init__(self, source: Source, revocations: Revocations):
        self._source = source
        self._revocations = revocations
        self.ignored: set[str] = set()  # worker ids ignored at the last refresh

    async def __call__(self) -> list[WorkerRecord]:
        kept, ignored = [], set()
        for record in await self._source():
            if record.announced_by and record.announced_by not in self._revocations:
                kept.append(record)
            else:
                ignored.add(record.id)
        if ignored - self.ignored:
            log.warning("ignoring registry records no valid worker token announced: %s",
                        ", ".join(sorted(ignored - self.ignored)[:10]))
        self.ignored = ignored
        return kept
