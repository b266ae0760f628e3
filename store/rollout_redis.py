"""Rollouts in the store's Redis: records, commands, the driving lease, and per-version traffic windows.

Keys, under the store's prefix P:
  P rollouts                      HASH    "<name>@<alias>" -> the rollout's JSON (rollout_record.Rollout)
  P rollouts:cmd                  HASH    "<name>@<alias>" -> a pending command JSON {"cmd", "seq"}
  P rollout:lease:<name>@<alias>  STRING  the id of the store process driving it (expires unless renewed)
  P vs:<region>:<key>:<bucket>    HASH    per-version figures of one time bucket (rollout_figures.Figures fields)
  P vs:regions                    SET     regions routers have reported from
Only the lease holder writes a rollout's record, and every such write checks the lease inside the same script that
appends its ROLLOUT_CHANGED event, so a store process that lost its lease can never write (exactly one driver).
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from adapterfleet.common.errors import FailedPrecondition, NotFound
from adapterfleet.store.redis_errors import redis_address, typed_redis
from adapterfleet.store.rollout_figures import Figures
from adapterfleet.store.rollout_record import ACTIVE_STATES, Rollout

_EVENT = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function event(P, name, version, digest, alias, targets, detail)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', 100000, '*',
    'type', 'ROLLOUT_CHANGED', 'name', name, 'version', version, 'digest', digest,
    'alias', alias, 'targets', targets, 'time', tostring(now()), 'detail', detail)
end
"""

# ARGV: P, id, record, name, version, digest, alias, targets, detail -> {"ok"} | {"active", record}
START = _EVENT + """
local P, id = ARGV[1], ARGV[2]
local cur = redis.call('HGET', P .. 'rollouts', id)
if cur then
  local state = cjson.decode(cur)['state']
  if state == 'running' or state == 'paused' then return {'active', cur} end
end
redis.call('HSET', P .. 'rollouts', id, ARGV[3])
redis.call('HDEL', P .. 'rollouts:cmd', id)
event(P, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return {'ok'}
"""

# ARGV: P, id, owner, record, done_cmd_seq ("" = none), name, version, digest, alias, targets, detail ("" = no event)
#   -> {"ok"} | {"lost"}
WRITE = _EVENT + """
local P, id, owner = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', P .. 'rollout:lease:' .. id) ~= owner then return {'lost'} end
redis.call('HSET', P .. 'rollouts', id, ARGV[4])
if ARGV[5] ~= '' then
  local cmd = redis.call('HGET', P .. 'rollouts:cmd', id)
  if cmd and tostring(cjson.decode(cmd)['seq']) == ARGV[5] then redis.call('HDEL', P .. 'rollouts:cmd', id) end
end
if ARGV[11] ~= '' then event(P, ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]) end
return {'ok'}
"""

# ARGV: P, id, cmd -> {"ok", seq} | {"notfound"} | {"inactive", state}
COMMAND = """
local P, id, cmd = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HGET', P .. 'rollouts', id)
if not cur then return {'notfound'} end
local state = cjson.decode(cur)['state']
if state ~= 'running' and state ~= 'paused' then return {'inactive', state} end
local seq = redis.call('HINCRBY', P .. 'rollouts:seq', id, 1)
redis.call('HSET', P .. 'rollouts:cmd', id, cjson.encode({cmd = cmd, seq = seq}))
return {'ok', tostring(seq)}
"""

# ARGV: P, id, owner, ms -> 1 held (acquired or renewed) | 0 someone else holds it
LEASE = """
local key = ARGV[1] .. 'rollout:lease:' .. ARGV[2]
local cur = redis.call('GET', key)
if cur == ARGV[3] then redis.call('PEXPIRE', key, ARGV[4]) return 1 end
if cur then return 0 end
redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
return 1
"""

# ARGV: P, id, owner
RELEASE = """
local key = ARGV[1] .. 'rollout:lease:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then redis.call('DEL', key) end
return 1
"""


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


class RolloutRedis:
    def __init__(self, client: aioredis.Redis, prefix: str = "af:", bucket_s: float = 1.0,
                 keep_s: float = 3600.0):
        self._r = client
        self._p = prefix
        self.redis_address = redis_address(client)
        self.bucket_s = bucket_s
        self._keep_s = keep_s
        self._start = client.register_script(START)
        self._write = client.register_script(WRITE)
        self._command = client.register_script(COMMAND)
        self._lease = client.register_script(LEASE)
        self._release = client.register_script(RELEASE)

    async def _run(self, script, args: list) -> list:
        out = await script(args=[self._p, *args])
        return [_text(x) if isinstance(x, bytes) else x for x in out] if isinstance(out, list) else out

    # --- records ----------------------------------------------------------------------------------------------------
    @typed_redis
    async def start(self, r: Rollout, detail: str) -> None:
        out = await self._run(self._start, [r.id, r.to_json(), *self._event(r, detail)])
        if out[0] == "active":
            cur = Rollout.from_json(out[1])
            raise FailedPrecondition(
                f"a rollout of {r.id} is already {cur.state} (v{cur.from_version} -> v{cur.to_version}); "
                f"`adapterfleet rollout abort {r.name} --alias {r.alias}` first, or wait for it to finish")

    @staticmethod
    def _event(r: Rollout, detail: str) -> list[str]:
        digest = r.to_key.partition("@")[2]
        return [r.name, str(r.to_version), digest, r.alias, r.weights, detail]

    @typed_redis
    async def write(self, r: Rollout, owner: str, *, kind: str = "", detail: str = "", done_seq: str = "") -> bool:
        """Store ``r`` if ``owner`` still holds its lease (False otherwise); with ``kind``, append the event too."""
        event = self._event(r, r.event_detail(kind, detail)) if kind else ["", "", "", "", "", ""]
        out = await self._run(self._write, [r.id, owner, r.to_json(), done_seq, *event])
        return out[0] == "ok"

    @typed_redis
    async def get(self, rid: str) -> Rollout | None:
        raw = await self._r.hget(f"{self._p}rollouts", rid)
        return Rollout.from_json(raw) if raw else None

    @typed_redis
    async def all(self) -> list[Rollout]:
        raw = await self._r.hgetall(f"{self._p}rollouts")
        return sorted((Rollout.from_json(v) for v in raw.values()), key=lambda r: r.id)

    async def active(self) -> list[Rollout]:
        return [r for r in await self.all() if r.state in ACTIVE_STATES]

    # --- commands ---------------------------------------------------------------------------------------------------
    @typed_redis
    async def command(self, rid: str, cmd: str) -> str:
        """Queue ``cmd`` for the driver; returns its sequence number."""
        out = await self._run(self._command, [rid, cmd])
        if out[0] == "notfound":
            raise NotFound(f"there is no rollout of {rid}; `adapterfleet rollout list` shows them")
        if out[0] == "inactive":
            raise FailedPrecondition(f"the rollout of {rid} is {out[1]}; only a running or paused rollout can be "
                                     f"paused, resumed or aborted (start a new one instead)")
        return str(out[1])

    @typed_redis
    async def pending_command(self, rid: str) -> dict | None:
        raw = await self._r.hget(f"{self._p}rollouts:cmd", rid)
        return json.loads(raw) if raw else None

    @typed_redis
    async def pending_commands(self) -> dict[str, dict]:
        raw = await self._r.hgetall(f"{self._p}rollouts:cmd")
        return {_text(k): json.loads(v) for k, v in raw.items()}

    # --- the lease --------------------------------------------------------------------------------------------------
    @typed_redis
    async def hold(self, rid: str, owner: str, lease_s: float) -> bool:
        """Acquire or renew the lease on ``rid`` for ``lease_s``; False when another process holds it."""
        return bool(await self._lease(args=[self._p, rid, owner, str(max(1, int(lease_s * 1000)))]))

    @typed_redis
    async def release(self, rid: str, owner: str) -> None:
        await self._release(args=[self._p, rid, owner])

    @typed_redis
    async def holder(self, rid: str) -> str:
        raw = await self._r.get(f"{self._p}rollout:lease:{rid}")
        return _text(raw) if raw else ""

    # --- per-version figures ----------------------------------------------------------------------------------------
    def _bucket(self, t: float) -> int:
        return int(t // self.bucket_s)

    @typed_redis
    async def add_figures(self, region: str, figures: dict[str, Figures], now: float | None = None) -> None:
        """Add routers' windows (version key -> figures) to the current time bucket of ``region``."""
        if not figures:
            return
        bucket = self._bucket(time.time() if now is None else now)
        ttl = int(self._keep_s)
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.sadd(f"{self._p}vs:regions", region)
            for key, f in figures.items():
                h = f"{self._p}vs:{region}:{key}:{bucket}"
                for field_name, n in f.to_fields().items():
                    pipe.hincrby(h, field_name, n)
                pipe.expire(h, ttl)
            await pipe.execute()

    @typed_redis
    async def figures(self, key: str, start: float, end: float, region: str = "") -> Figures:
        """The figures of version ``key`` over [start, end] (whole buckets), in ``region`` or in every region."""
        regions = [region] if region else sorted(_text(x) for x in await self._r.smembers(f"{self._p}vs:regions"))
        first, last = self._bucket(start), self._bucket(end)
        out = Figures()
        if not regions or last < first:
            return out
        async with self._r.pipeline(transaction=False) as pipe:
            for reg in regions:
                for b in range(first, last + 1):
                    pipe.hgetall(f"{self._p}vs:{reg}:{key}:{b}")
            for fields in await pipe.execute():
                if fields:
                    out.add(Figures.from_fields(fields))
        return out
