"""Quarantine: blobs whose stored bytes were found not to hash to their digest.

Blobs are content-addressed, so dedupe (MissingBlobs, a push's skipped files) trusts that an object stored under a
digest holds those bytes. When S3 changes behind the store's back, that trust is wrong, and the repair that every
DATA_LOSS message suggests (re-push from a good copy) would be deduplicated against the corrupt object. So a
receiver that finds a mismatch reports the digest (``ReportCorrupt``); the store re-reads the object itself and,
only if the backend's bytes really do not hash to the digest (a report is a hint, never trusted), quarantines it:
fetches refuse it at once (DATA_LOSS naming the fix), MissingBlobs reports it missing so the next push sends its
bytes, and the push that publishes good bytes under that digest lifts the quarantine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis

from adapterfleet.common.errors import Unavailable
from adapterfleet.store.redis_errors import redis_address, typed_redis

log = logging.getLogger("adapterfleet.store")

RECHECK_S = 60.0  # a digest found good is not re-read for a report within this long (a report costs a full read)


class Quarantine:
    """The quarantined digests, a Redis set shared by every store process on that Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str = "af:", clock: Callable[[], float] = time.monotonic):
        self._r = client
        self.redis_address = redis_address(client)  # named in the UNAVAILABLE that @typed_redis raises
        self.key = f"{prefix}quarantine"
        self._clock = clock
        self._good_until: dict[str, float] = {}

    @typed_redis
    async def members(self, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` are quarantined (one round trip)."""
        asked = list(dict.fromkeys(digests))
        if not asked:
            return set()
        flags = await self._r.smismember(self.key, asked)
        return {d for d, bad in zip(asked, flags, strict=True) if bad}

    async def members_if_reachable(self, digests: Iterable[str]) -> set[str]:
        """``members``, or none while Redis is unreachable: for reads that must keep working without Redis
        (dedupe asks S3; receivers hash every byte anyway, so a missed quarantine costs a refusal later, not
        bad bytes)."""
        try:
            return await self.members(digests)
        except Unavailable as err:
            log.warning("quarantine not checked: %s", err.message)
            return set()

    @typed_redis
    async def add(self, digest: str) -> None:
        await self._r.sadd(self.key, digest)

    @typed_redis
    async def lift(self, digests: Iterable[str]) -> None:
        """Good bytes were just published under these digests."""
        lifted = list(digests)
        if lifted:
            await self._r.srem(self.key, *lifted)
        for d in lifted:
            self._good_until.pop(d, None)

    def recently_good(self, digest: str) -> bool:
        return self._good_until.get(digest, 0.0) > self._clock()

    def found_good(self, digest: str) -> None:
        now = self._clock()
        if len(self._good_until) > 4096:  # bounded: drop the expired first, then everything
            self._good_until = {d: t for d, t in self._good_until.items() if t > now} or {}
            if len(self._good_until) > 4096:
                self._good_until.clear()
        self._good_until[digest] = now + RECHECK_S
