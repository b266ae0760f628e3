"""Lua scripts that make each index change atomic (one script = one atomic step, event included).

Key layout, all under the configured prefix P (default "af:"):
  P names                  SET    adapter names
  P n:<name>:v             HASH   version -> digest
  P n:<name>:d             HASH   digest -> version
  P n:<name>:m             HASH   digest -> manifest JSON
  P n:<name>:y             SET    yanked versions
  P n:<name>:a             HASH   alias -> targets ("3:90,4:10")
  P refs                   SET    sha256 of every blob a version refers to (never shrinks: versions are immutable)
  P lease:<sha256>         ZSET   push id -> lease expiry (unix s); a leased blob is never collected
  P doomed                 ZSET   sha256 -> time GC marked it for deletion
  P events                 STREAM change events (Watch)
Scripts return {"ok", ...} or {"<error kind>", detail}; the index turns those into typed errors.
"""

# Shared Lua helpers: current time in seconds, event append.
_PRELUDE = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function event(P, kind, name, version, digest, alias, targets)
  return redis.call('XADD', P .. 'events', 'MAXLEN', '~', 100000, '*',
    'type', kind, 'name', name, 'version', version, 'digest', digest,
    'alias', alias, 'targets', targets, 'time', tostring(now()))
end
local function targets_ok(P, name, targets)
  for v in string.gmatch(targets, '(%d+):%d+') do
    if redis.call('HEXISTS', P .. 'n:' .. name .. ':v', v) == 0 then return {'notfound', v} end
    if redis.call('SISMEMBER', P .. 'n:' .. name .. ':y', v) == 1 then return {'yanked', v} end
  end
  return nil
end
"""

# ARGV: P, push_id, expiry, sha256...  -> {"ok"} or {"doomed", sha256}
LEASE = _PRELUDE + """
local P, id, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3])
local fresh = now() - 600
for i = 4, #ARGV do
  local s = redis.call('ZSCORE', P .. 'doomed', ARGV[i])
  if s and tonumber(s) > fresh then return {'doomed', ARGV[i]} end
end
for i = 4, #ARGV do
  local key = P .. 'lease:' .. ARGV[i]
  redis.call('ZADD', key, expiry, id)
  redis.call('EXPIREAT', key, math.ceil(expiry) + 60)
end
return {'ok'}
"""

# ARGV: P, push_id, sha256...
RELEASE = """
for i = 3, #ARGV do redis.call('ZREM', ARGV[1] .. 'lease:' .. ARGV[i], ARGV[2]) end
return {'ok'}
"""

# ARGV: P, name, digest, manifest_json, push_id, alias, sha256...
#   -> {"ok", version, created(1/0)} | {"lease_expired", sha256} | {"yanked", version}
COMMIT = _PRELUDE + """
local P, name, digest, manifest, id, alias = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local base = P .. 'n:' .. name
local t = now()
local version = redis.call('HGET', base .. ':d', digest)
local created = 0
if not version then
  for i = 7, #ARGV do
    local exp = redis.call('ZSCORE', P .. 'lease:' .. ARGV[i], id)
    if (not exp) or tonumber(exp) < t then return {'lease_expired', ARGV[i]} end
  end
  version = tostring(redis.call('HLEN', base .. ':v') + 1)
  redis.call('HSET', base .. ':v', version, digest)
  redis.call('HSET', base .. ':d', digest, version)
  redis.call('HSET', base .. ':m', digest, manifest)
  redis.call('SADD', P .. 'names', name)
  for i = 7, #ARGV do redis.call('SADD', P .. 'refs', ARGV[i]) end
  event(P, 'VERSION_PUSHED', name, version, digest, '', '')
  created = 1
end
for i = 7, #ARGV do redis.call('ZREM', P .. 'lease:' .. ARGV[i], id) end
if alias ~= '' then
  if redis.call('SISMEMBER', base .. ':y', version) == 1 then return {'yanked', version} end
  local targets = version .. ':100'
  redis.call('HSET', base .. ':a', alias, targets)
  event(P, 'ALIAS_CHANGED', name, version, digest, alias, targets)
end
return {'ok', version, created}
"""

# ARGV: P, name, alias, targets ("" = delete), mode ("any" | "absent" | "equal"), expected
#   -> {"ok", previous} | {"conflict", current} | {"notfound", version} | {"yanked", version} | {"noalias", ""}
SET_ALIAS = _PRELUDE + """
local P, name, alias, targets, mode, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = P .. 'n:' .. name .. ':a'
local current = redis.call('HGET', key, alias)
if mode == 'absent' and current then return {'conflict', current} end
if mode == 'equal' and current ~= expected then return {'conflict', current or ''} end
if targets == '' then
  if not current then return {'noalias', ''} end
  redis.call('HDEL', key, alias)
  event(P, 'ALIAS_DELETED', name, '', '', alias, '')
  return {'ok', current}
end
local bad = targets_ok(P, name, targets)
if bad then return bad end
redis.call('HSET', key, alias, targets)
event(P, 'ALIAS_CHANGED', name, '', '', alias, targets)
return {'ok', current or ''}
"""

# ARGV: P, name, version, force ("1"/"0") -> {"ok"} | {"notfound", v} | {"aliased", "prod,beta"}
YANK = _PRELUDE + """
local P, name, version, force = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local base = P .. 'n:' .. name
local digest = redis.call('HGET', base .. ':v', version)
if not digest then return {'notfound', version} end
if force ~= '1' then
  local holders = {}
  local aliases = redis.call('HGETALL', base .. ':a')
  for i = 1, #aliases, 2 do
    for v in string.gmatch(aliases[i + 1], '(%d+):%d+') do
      if v == version then table.insert(holders, aliases[i]) end
    end
  end
  if #holders > 0 then return {'aliased', table.concat(holders, ',')} end
end
if redis.call('SADD', base .. ':y', version) == 1 then
  event(P, 'VERSION_YANKED', name, version, digest, '', '')
end
return {'ok'}
"""

# ARGV: P, sha256...  -> the candidates now marked doomed (unreferenced and unleased)
GC_MARK = _PRELUDE + """
local P = ARGV[1]
local t = now()
local doomed = {}
for i = 2, #ARGV do
  local s = ARGV[i]
  if redis.call('SISMEMBER', P .. 'refs', s) == 0
     and redis.call('ZCOUNT', P .. 'lease:' .. s, t, '+inf') == 0 then
    redis.call('ZADD', P .. 'doomed', t, s)
    table.insert(doomed, s)
  end
end
return doomed
"""

# A Resolve of a bare name, in one round trip: the latest version that is not yanked, its manifest, and the
# quarantine's size. Returns {version entries} when every version is yanked (or there is none), else
# {version entries, version, digest, manifest JSON or false, quarantined blobs}.
LATEST = """
local P, name = ARGV[1], ARGV[2]
local flat = redis.call('HGETALL', P .. 'n:' .. name .. ':v')
local best, digest = -1, false
for i = 1, #flat, 2 do
  local v = tonumber(flat[i])
  if v > best and redis.call('SISMEMBER', P .. 'n:' .. name .. ':y', flat[i]) == 0 then
    best, digest = v, flat[i + 1]
  end
end
local entries = #flat / 2
if not digest then return {entries} end
return {entries, best, digest, redis.call('HGET', P .. 'n:' .. name .. ':m', digest),
        redis.call('SCARD', P .. 'quarantine')}
"""
