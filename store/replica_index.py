"""A secondary region's Redis writes: install what the primary already decided, as-is (the same version numbers,
digests, alias targets and yanks), each atomically with the replication cursor and a local event.

Every apply script first compares the primary event's cursor with the one stored under ``P repl:cursor``: an event
at or before it was applied already and is skipped (no duplicate), and the cursor moves in the same atomic step as
the change (no gap: a crash leaves either both or neither). The scripts are also idempotent on state, so a
resynchronisation may overlap events that follow it without emitting an event twice for one change.

Keys (beside scripts.py's layout, same prefix P):
  P repl:cursor            STRING the last primary event applied ("<ms>-<seq>")
  P repl:seq               STRING how many primary events precede it and it (the primary's stream counts the
                                  same way: its entries-added); the primary trimmed more than this -> a gap
  P repl:pending           HASH   sha256 -> a key of a version that refers to it ("name@sha256:..."): blobs of
                                  replicated versions not yet copied into this region's bucket
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from adapterfleet.common.errors import FailedPrecondition
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.redis_errors import redis_address, typed_redis
from adapterfleet.store.scripts import _PRELUDE
from adapterfleet.store.targets import Targets, encode

ZERO = "0-0"

_CURSOR = """
local function id_parts(s)
  local a, b = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(a or 0), tonumber(b or 0)
end
local function after(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am > bm or (am == bm and as > bs)
end
local function fresh(P, cursor)
  local current = redis.call('GET', P .. 'repl:cursor') or '0-0'
  return after(cursor, current)
end
local function advance(P, cursor)
  redis.call('SET', P .. 'repl:cursor', cursor)
  redis.call('INCR', P .. 'repl:seq')
end
local function install_version(P, name, version, digest, manifest, blobs)
  local base = P .. 'n:' .. name
  local have = redis.call('HGET', base .. ':v', version)
  if have and have ~= digest then return {'conflict', have} end
  if have then return nil end
  redis.call('HSET', base .. ':v', version, digest)
  redis.call('HSET', base .. ':d', digest, version)
  redis.call('HSET', base .. ':m', digest, manifest)
  redis.call('SADD', P .. 'names', name)
  for _, s in ipairs(blobs) do
    redis.call('SADD', P .. 'refs', s)
    redis.call('HSETNX', P .. 'repl:pending', s, name .. '@' .. digest)
  end
  event(P, 'VERSION_PUSHED', name, version, digest, '', '')
  return nil
end
local function install_alias(P, name, alias, targets, version, digest)
  local key = P .. 'n:' .. name .. ':a'
  local current = redis.call('HGET', key, alias)
  if targets == '' then
    if current then
      redis.call('HDEL', key, alias)
      event(P, 'ALIAS_DELETED', name, '', '', alias, '')
    end
  elseif current ~= targets then
    redis.call('HSET', key, alias, targets)
    event(P, 'ALIAS_CHANGED', name, version, digest, alias, targets)
  end
end
local function install_yank(P, name, version, digest)
  if redis.call('SADD', P .. 'n:' .. name .. ':y', version) == 1 then
    event(P, 'VERSION_YANKED', name, version, digest, '', '')
  end
end
"""

# ARGV: P, cursor, name, version, digest, manifest_json, sha256...  -> {"ok"} | {"dup"} | {"conflict", digest}
APPLY_VERSION = _PRELUDE + _CURSOR + """
local P, cursor = ARGV[1], ARGV[2]
if not fresh(P, cursor) then return {'dup'} end
local blobs = {}
for i = 7, #ARGV do table.insert(blobs, ARGV[i]) end
local bad = install_version(P, ARGV[3], ARGV[4], ARGV[5], ARGV[6], blobs)
if bad then return bad end
advance(P, cursor)
return {'ok'}
"""

# ARGV: P, cursor, name, alias, targets ("" = deleted), version, digest  -> {"ok"} | {"dup"}
APPLY_ALIAS = _PRELUDE + _CURSOR + """
local P, cursor = ARGV[1], ARGV[2]
if not fresh(P, cursor) then return {'dup'} end
install_alias(P, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
advance(P, cursor)
return {'ok'}
"""

# ARGV: P, cursor, name, version, digest  -> {"ok"} | {"dup"}
APPLY_YANK = _PRELUDE + _CURSOR + """
local P, cursor = ARGV[1], ARGV[2]
if not fresh(P, cursor) then return {'dup'} end
install_yank(P, ARGV[3], ARGV[4], ARGV[5])
advance(P, cursor)
return {'ok'}
"""

# An event with no state of this module's to install (ROLLOUT_CHANGED: the rollout controller runs on the primary
# and its alias moves arrive as ALIAS_CHANGED), passed on as-is to this region's watchers. A TOKEN_REVOKED event
# also revokes the token here (revocations.py's set; kept as long as a revocation without an expiry).
# ARGV: P, cursor, type, name, version, digest, alias, targets, detail, revoke_until  -> {"ok"} | {"dup"}
PASS_ON = _PRELUDE + _CURSOR + """
local P, cursor, kind = ARGV[1], ARGV[2], ARGV[3]
if not fresh(P, cursor) then return {'dup'} end
if kind == 'TOKEN_REVOKED' then redis.call('ZADD', P .. 'revoked', ARGV[10], ARGV[9]) end
redis.call('XADD', P .. 'events', 'MAXLEN', '~', 100000, '*', 'type', kind, 'name', ARGV[4],
  'version', ARGV[5], 'digest', ARGV[6], 'alias', ARGV[7], 'targets', ARGV[8], 'time', tostring(now()),
  'detail', ARGV[9])
advance(P, cursor)
return {'ok'}
"""

# One adapter's whole state, as the primary lists it (a resynchronisation). Aliases the primary no longer has are
# deleted; versions and yanks only ever accumulate (they are immutable on the primary too).
# ARGV: P, name, nversions, (version, digest, manifest_json, yanked "1"/"0", nblobs, sha256...)*, (alias, targets)*
#   -> {"ok"} | {"conflict", version, digest}
RESYNC_NAME = _PRELUDE + _CURSOR + """
local P, name = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local i = 4
local yanks = {}
for _ = 1, n do
  local version, digest, manifest, yanked = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local nblobs = tonumber(ARGV[i + 4])
  local blobs = {}
  for j = 1, nblobs do table.insert(blobs, ARGV[i + 4 + j]) end
  local bad = install_version(P, name, version, digest, manifest, blobs)
  if bad then return {'conflict', version, bad[2]} end
  if yanked == '1' then table.insert(yanks, {version, digest}) end
  i = i + 5 + nblobs
end
for _, y in ipairs(yanks) do install_yank(P, name, y[1], y[2]) end
local keep = {}
while i <= #ARGV do
  install_alias(P, name, ARGV[i], ARGV[i + 1], '', '')
  keep[ARGV[i]] = true
  i = i + 2
end
local aliases = redis.call('HKEYS', P .. 'n:' .. name .. ':a')
for _, a in ipairs(aliases) do
  if not keep[a] then install_alias(P, name, a, '', '', '') end
end
return {'ok'}
"""


@dataclass(frozen=True)
class StreamInfo:
    """This store's own event stream: the newest id, the oldest kept, how many were ever added and are kept."""

    last: str = ZERO
    first: str = ZERO
    entries_added: int = 0  # ever added: entries_added - length were trimmed (or deleted), the oldest first
    length: int = 0


def id_key(cursor: str) -> tuple[int, int]:
    """A stream id as a sortable pair ("0", "" and "$" count as before everything)."""
    if "-" not in cursor:
        return (0, 0)
    ms, seq = cursor.split("-", 1)
    return int(ms), int(seq)


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


class ReplicaIndex:
    """The Redis side of replication: the cursor, the installs, the pending blobs, and the stream's figures (which
    a primary reports too)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "af:"):
        self._r = client
        self._p = prefix
        self.redis_address = redis_address(client)  # what an outage's Unavailable names
        self._version = client.register_script(APPLY_VERSION)
        self._alias = client.register_script(APPLY_ALIAS)
        self._yank = client.register_script(APPLY_YANK)
        self._pass_on = client.register_script(PASS_ON)
        self._resync = client.register_script(RESYNC_NAME)

    async def _run(self, script, args: list) -> list[str]:
        out = await script(args=[self._p, *args])
        return [_text(x) for x in out]

    # --- the cursor and the installs ---------------------------------------------------------------------------------
    @typed_redis
    async def cursor(self) -> str:
        raw = await self._r.get(f"{self._p}repl:cursor")
        return _text(raw) if raw else ZERO

    @typed_redis
    async def seq(self) -> int:
        raw = await self._r.get(f"{self._p}repl:seq")
        return int(raw) if raw else 0

    @typed_redis
    async def set_cursor(self, cursor: str, seq: int) -> None:
        """Follow from ``cursor``, the ``seq``-th event of the primary's stream (after a resynchronisation)."""
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self._p}repl:cursor", cursor)
            pipe.set(f"{self._p}repl:seq", seq)
            await pipe.execute()

    @typed_redis
    async def apply_version(self, cursor: str, manifest: Manifest) -> bool:
        """Install a pushed version as the primary numbered it; False when the event was applied before."""
        blobs = sorted({f.sha256 for f in manifest.files})
        out = await self._run(self._version, [cursor, manifest.name, str(manifest.version), manifest.digest,
                                              manifest.to_json(), *blobs])
        if out[0] == "conflict":
            raise FailedPrecondition(
                f"{manifest.name}@{manifest.version} is {out[1]} in this region but {manifest.digest} on the "
                "primary: this region's Redis holds versions the primary never made (was it written to directly?); "
                "point it at an empty Redis prefix and let it resynchronise")
        return out[0] == "ok"

    @typed_redis
    async def apply_alias(self, cursor: str, name: str, alias: str, targets: Targets, version: int = 0,
                          digest: str = "") -> bool:
        out = await self._run(self._alias, [cursor, name, alias, encode(targets), str(version or ""), digest])
        return out[0] == "ok"

    @typed_redis
    async def apply_yank(self, cursor: str, name: str, version: int, digest: str) -> bool:
        out = await self._run(self._yank, [cursor, name, str(version), digest])
        return out[0] == "ok"

    @typed_redis
    async def pass_on(self, e: StoreEvent, revoke_until: float = 0.0) -> bool:
        """Re-publish a primary event with no state here (and revoke the token of a TOKEN_REVOKED one)."""
        out = await self._run(self._pass_on, [e.cursor, e.type, e.name, str(e.version or ""), e.digest, e.alias,
                                              encode(e.targets), e.detail, repr(revoke_until)])
        return out[0] == "ok"

    @typed_redis
    async def resync_name(self, name: str, manifests: Sequence[Manifest], aliases: dict[str, Targets]) -> None:
        args: list[str] = [name, str(len(manifests))]
        for m in manifests:
            blobs = sorted({f.sha256 for f in m.files})
            args += [str(m.version), m.digest, m.to_json(), "1" if m.yanked else "0", str(len(blobs)), *blobs]
        for alias, targets in sorted(aliases.items()):
            args += [alias, encode(targets)]
        out = await self._run(self._resync, args)
        if out[0] == "conflict":
            raise FailedPrecondition(
                f"{name}@{out[1]} is {out[2]} in this region but different on the primary: this region's Redis "
                "holds versions the primary never made; point it at an empty Redis prefix and let it resynchronise")

    # --- blobs not yet copied ---------------------------------------------------------------------------------------
    @typed_redis
    async def pending(self, limit: int = 256) -> dict[str, str]:
        """Up to ``limit`` blobs not yet copied: sha256 -> the key of a version that refers to it."""
        out: dict[str, str] = {}
        async for sha, key in self._r.hscan_iter(f"{self._p}repl:pending", count=limit):
            out[_text(sha)] = _text(key)
            if len(out) >= limit:
                break
        return out

    @typed_redis
    async def pending_count(self) -> int:
        return int(await self._r.hlen(f"{self._p}repl:pending"))

    @typed_redis
    async def copied(self, blobs: Sequence[str]) -> None:
        if blobs:
            await self._r.hdel(f"{self._p}repl:pending", *blobs)

    # --- the stream's figures ---------------------------------------------------------------------------------------
    @typed_redis
    async def stream_info(self) -> StreamInfo:
        key = f"{self._p}events"
        if not await self._r.exists(key):
            return StreamInfo()
        info = await self._r.xinfo_stream(key)
        first = info.get("first-entry")
        return StreamInfo(
            last=_text(info.get("last-generated-id") or ZERO),
            first=_text(first[0]) if first else ZERO,
            entries_added=int(info.get("entries-added") or 0),
            length=int(info.get("length") or 0),
        )

    @typed_redis
    async def events_after(self, cursor: str, cap: int = 10_000) -> tuple[int, float]:
        """How many events follow ``cursor`` (at most ``cap`` are counted), and the unix time of the first one."""
        start = "-" if cursor in ("", "0", ZERO) else f"({cursor}"
        entries = await self._r.xrange(f"{self._p}events", min=start, max="+", count=cap)
        if not entries:
            return 0, 0.0
        ms = id_key(_text(entries[0][0] or ZERO))[0]
        return len(entries), ms / 1000.0
