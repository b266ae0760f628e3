"""Worker membership in Redis: each announcement replaces the worker's record and extends its expiry.

    P workers          HASH  worker id -> record JSON
    P workers:expiry   ZSET  worker id -> unix time the record stops counting
A worker that stops announcing is gone after its TTL; stale records are swept on read. A Redis outage is
UNAVAILABLE naming Redis (redis_errors.py).
"""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as aioredis

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.redis_errors import redis_address, typed_redis
from adapterfleet.store.workers import WorkerRecord, record_from_json, record_to_json


class RedisRegistry:
    def __init__(self, client: aioredis.Redis, prefix: str = "af:", default_ttl: float = 3.0):
        self._r = client
        self.redis_address = redis_address(client)
        self._hash = f"{prefix}workers"
        self._expiry = f"{prefix}workers:expiry"
        self.default_ttl = default_ttl

    @typed_redis
    async def announce(self, record: WorkerRecord, ttl: float = 0.0) -> None:
        if not record.id or not record.address:
            raise InvalidArgument("a worker announcement needs an id and an address")
        expiry = time.time() + (ttl or self.default_ttl)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self._hash, record.id, record_to_json(record))
            pipe.zadd(self._expiry, {record.id: expiry})
            await pipe.execute()

    @typed_redis
    async def workers(self, region: str = "") -> list[WorkerRecord]:
        now = time.time()
        dead = await self._r.zrangebyscore(self._expiry, "-inf", now - 60)
        if dead:  # swept a minute after expiry; until then they are just not listed
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hdel(self._hash, *dead)
                pipe.zrem(self._expiry, *dead)
                await pipe.execute()
        # redis-py types the reply as members or (member, score) pairs whatever withscores says; without it, members
        live = cast("list[bytes | str]", await self._r.zrangebyscore(self._expiry, now, "+inf"))
        if not live:
            return []
        records = [record_from_json(raw) for raw in await self._r.hmget(self._hash, live) if raw]
        return sorted((r for r in records if not region or r.region == region), key=lambda r: r.id)
