"""The Redis index of versions, aliases and events. Every write is one atomic Lua script (see scripts.py)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapterfleet.common.errors import AliasConflict, FailedPrecondition, NotFound, Unavailable
from adapterfleet.store import scripts
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.targets import Targets, decode, encode


def _text(x: bytes | str) -> str:
    """A reply string. redis-py types replies ``bytes | str`` (``str`` with decode_responses); ours come as bytes."""
    return x.decode() if isinstance(x, bytes) else x


class RedisIndex:
    def __init__(self, client: aioredis.Redis, prefix: str = "af:"):
        self._r = client
        self._p = prefix
        self._lease = client.register_script(scripts.LEASE)
        self._release = client.register_script(scripts.RELEASE)
        self._commit = client.register_script(scripts.COMMIT)
        self._set_alias = client.register_script(scripts.SET_ALIAS)
        self._yank = client.register_script(scripts.YANK)
        self._gc_mark = client.register_script(scripts.GC_MARK)

    def _k(self, name: str, kind: str) -> str:
        return f"{self._p}n:{name}:{kind}"

    async def _run(self, script, args: list) -> list:
        try:
            out = await script(args=[self._p, *args])
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise Unavailable(f"Redis is unreachable: {err}; check --redis-url and that the server is up") from err
        return [x.decode() if isinstance(x, bytes) else x for x in out]

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise Unavailable(f"Redis is unreachable: {err}; check --redis-url and that the server is up") from err

    # --- pushes -------------------------------------------------------------------------------------------------
    async def lease(self, push_id: str, expiry: float, blobs: list[str]) -> str | None:
        """Protect blobs from GC until ``expiry``. Returns a blob GC is deleting right now, or None."""
        out = await self._run(self._lease, [push_id, repr(expiry), *blobs])
        return out[1] if out[0] == "doomed" else None

    async def release(self, push_id: str, blobs: list[str]) -> None:
        await self._run(self._release, [push_id, *blobs])

    async def commit(self, manifest: Manifest, push_id: str, alias: str = "") -> tuple[int, bool]:
        """Make the version visible (all or nothing). Returns (version, created)."""
        blobs = sorted({f.sha256 for f in manifest.files})
        out = await self._run(
            self._commit, [manifest.name, manifest.digest, manifest.to_json(), push_id, alias, *blobs]
        )
        if out[0] == "lease_expired":
            raise FailedPrecondition(
                f"the push took longer than the blob lease, so blob {out[1]} may have been collected; push again"
            )
        if out[0] == "yanked":
            raise FailedPrecondition(
                f"{manifest.name}@{out[1]} has identical content but is yanked; the alias was not moved"
            )
        return int(out[1]), bool(int(out[2]))

    # --- reads --------------------------------------------------------------------------------------------------
    async def digest_of(self, name: str, version: int) -> str | None:
        d = await self._r.hget(self._k(name, "v"), str(version))
        return _text(d) if d else None

    async def version_of(self, name: str, digest: str) -> int | None:
        v = await self._r.hget(self._k(name, "d"), digest)
        return int(v) if v else None

    async def manifest(self, name: str, digest: str) -> Manifest:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hget(self._k(name, "m"), digest)
            pipe.hget(self._k(name, "d"), digest)
            raw, version = await pipe.execute()
        if raw is None:
            raise NotFound(f"{name}@{digest} does not exist in this store")
        yanked = await self._r.sismember(self._k(name, "y"), version)
        return Manifest.from_json(raw.decode(), version=int(version), yanked=bool(yanked))

    async def versions(self, name: str) -> dict[int, str]:
        raw = await self._r.hgetall(self._k(name, "v"))
        return {int(v): _text(d) for v, d in raw.items()}

    async def yanked(self, name: str) -> set[int]:
        return {int(v) for v in await self._r.smembers(self._k(name, "y"))}

    async def aliases(self, name: str) -> dict[str, Targets]:
        raw = await self._r.hgetall(self._k(name, "a"))
        return {_text(a): decode(_text(t)) for a, t in raw.items()}

    async def alias(self, name: str, alias: str) -> Targets | None:
        raw = await self._r.hget(self._k(name, "a"), alias)
        return decode(_text(raw)) if raw else None

    async def names(self) -> list[str]:
        return sorted(_text(n) for n in await self._r.smembers(f"{self._p}names"))

    # --- aliases and yanks ----------------------------------------------------------------------------------------
    async def set_alias(self, name: str, alias: str, targets: Targets, expect: Targets | str | None) -> Targets:
        """CAS: ``expect`` is "any" (unconditional), None (must not exist) or the exact current targets.
        Empty ``targets`` deletes. Returns the previous targets."""
        if expect == "any":
            mode, expected = "any", ""
        elif expect is None:
            mode, expected = "absent", ""
        else:
            assert not isinstance(expect, str), f"expect is 'any', None or targets, not {expect!r}"
            mode, expected = "equal", encode(expect)
        out = await self._run(self._set_alias, [name, alias, encode(targets), mode, expected])
        kind, detail = out[0], out[1]
        if kind == "conflict":
            current = detail or "nothing (the alias does not exist)"
            raise AliasConflict(
                f"alias {name}@{alias} points at {current}, not at what you expected "
                f"({'nothing' if mode == 'absent' else expected}); someone changed it: re-read it and retry"
            )
        if kind == "notfound":
            raise NotFound(f"{name}@{detail} does not exist; an alias can only point at pushed versions")
        if kind == "yanked":
            raise FailedPrecondition(f"{name}@{detail} is yanked; point the alias at a version that is not")
        if kind == "noalias":
            raise NotFound(f"alias {name}@{alias} does not exist")
        return decode(detail)

    async def yank(self, name: str, version: int, force: bool) -> None:
        out = await self._run(self._yank, [name, str(version), "1" if force else "0"])
        if out[0] == "notfound":
            raise NotFound(f"{name}@{version} does not exist")
        if out[0] == "aliased":
            raise FailedPrecondition(
                f"{name}@{version} is the target of alias(es) {out[1]}; move them first, or yank with force "
                "(the aliases then skip the yanked version)"
            )

    # --- garbage collection ----------------------------------------------------------------------------------------
    async def referenced(self, blobs: list[str]) -> list[bool]:
        return [bool(x) for x in await self._r.smismember(f"{self._p}refs", blobs)] if blobs else []

    async def gc_mark(self, candidates: list[str]) -> list[str]:
        return await self._run(self._gc_mark, candidates) if candidates else []

    async def gc_unmark(self, blobs: list[str]) -> None:
        if blobs:
            await self._r.zrem(f"{self._p}doomed", *blobs)

    # --- events ---------------------------------------------------------------------------------------------------
    async def last_event_id(self) -> str:
        info = await self._r.xinfo_stream(f"{self._p}events") if await self._r.exists(f"{self._p}events") else None
        return info["last-generated-id"].decode() if info else "0-0"

    async def read_events(self, cursor: str, block_ms: int, count: int = 100) -> list[StoreEvent]:
        try:
            out = await self._r.xread({f"{self._p}events": cursor}, count=count, block=block_ms)
        except (RedisConnectionError, RedisTimeoutError) as err:
            raise Unavailable(f"Redis is unreachable: {err}") from err
        streams = out or []
        # RESP2 / legacy replies (redis-py's defaults, which make_redis keeps): [[stream, [(id, fields), ...]], ...]
        assert isinstance(streams, list), f"XREAD replied {type(streams).__name__}; the client must use RESP2 replies"
        events = []
        for _stream, entries in streams:
            for eid, fields in entries:
                f = {k.decode(): v.decode() for k, v in fields.items()}
                events.append(StoreEvent(
                    cursor=eid.decode(), type=f["type"], name=f["name"], version=int(f["version"] or 0),
                    digest=f["digest"], alias=f["alias"], targets=decode(f["targets"]),
                    time=float(f["time"]),
                ))
        return events
