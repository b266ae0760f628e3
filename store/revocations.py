"""Revoked token ids in the store's Redis, and the TOKEN_REVOKED event that tells every follower (server side).

    P revoked   ZSET  token id -> unix time the revocation may be forgotten (the token's own expiry)

Revoking is one Lua script: the id joins the set and the event joins the stream in one atomic step, so a follower
that lists the set and then watches from the cursor the list returned misses nothing.
"""

from __future__ import annotations

import re
import time

import redis.asyncio as aioredis

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.events import TOKEN_REVOKED
from adapterfleet.store.redis_errors import redis_address, typed_redis

KEEP_S = 366 * 86400.0  # a revocation without the token's expiry is kept this long
_ID_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,128}\Z")

REVOKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'type', ARGV[3], 'name', '', 'version', '0',
  'digest', '', 'alias', '', 'targets', '', 'time', tostring(now), 'detail', ARGV[1])
"""

LIST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local last = '0-0'
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
return {last, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
"""


def check_token_id(token_id: str) -> str:
    if not isinstance(token_id, str) or not _ID_RE.match(token_id):
        raise InvalidArgument(f"invalid token id {token_id[:40]!r}: the `id` that `adapterfleet token create "
                              "--json` printed (letters, digits, '_', '.', '-')")
    return token_id


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


class RevocationIndex:
    def __init__(self, client: aioredis.Redis, prefix: str = "af:"):
        self._r = client
        self.redis_address = redis_address(client)
        self._keys = [f"{prefix}revoked", f"{prefix}events"]
        self._revoke = client.register_script(REVOKE)
        self._list = client.register_script(LIST)

    @typed_redis
    async def revoke(self, token_id: str, expires: float = 0.0) -> str:
        """Revoke ``token_id`` until ``expires`` (0: a year from now); returns the event's cursor."""
        check_token_id(token_id)
        until = expires if expires > 0 else time.time() + KEEP_S
        return _text(await self._revoke(keys=self._keys, args=[token_id, repr(until), TOKEN_REVOKED]))

    @typed_redis
    async def revoked(self) -> tuple[list[str], str]:
        """(the ids revoked and not yet expired, the event cursor to follow the stream from)."""
        last, ids = await self._list(keys=self._keys)
        return [_text(i) for i in ids], _text(last)


class LocalRevocationSource:
    """The store following its own revocations (``watch``: the core's event stream, in process)."""

    def __init__(self, index: RevocationIndex, watch):
        self._index = index
        self._watch = watch

    async def revoked_tokens(self) -> tuple[list[str], str]:
        return await self._index.revoked()

    def watch(self, cursor: str):
        return self._watch(cursor)
