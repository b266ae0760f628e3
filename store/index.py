"""The Redis index of versions, aliases and events. Every write is one atomic Lua script (see scripts.py); reads
that need several keys are one pipelined round trip. Every public method is @typed_redis: an outage is UNAVAILABLE
naming Redis (redis_errors.py), never INTERNAL."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from adapterfleet.common.errors import AliasConflict, FailedPrecondition, NotFound
from adapterfleet.store import scripts
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.quarantine import Quarantine
from adapterfleet.store.redis_errors import redis_address, typed_redis
from adapterfleet.store.targets import Targets, decode, encode

BATCH = 512  # names per pipelined round trip when listing: one round trip each, replies parsed between them


def _text(x: bytes | str) -> str:
    """A reply string. redis-py types replies ``bytes | str`` (``str`` with decode_responses); ours come as bytes."""
    return x.decode() if isinstance(x, bytes) else x


class RedisIndex:
    def __init__(self, client: aioredis.Redis, prefix: str = "af:"):
        self._r = client
        self._p = prefix
        self.redis_address = redis_address(client)
        self.quarantine = Quarantine(client, prefix)
        self._lease = client.register_script(scripts.LEASE)
        self._release = client.register_script(scripts.RELEASE)
        self._commit = client.register_script(scripts.COMMIT)
        self._set_alias = client.register_script(scripts.SET_ALIAS)
        self._yank = client.register_script(scripts.YANK)
        self._gc_mark = client.register_script(scripts.GC_MARK)
        self._latest = client.register_script(scripts.LATEST)

    def _k(self, name: str, kind: str) -> str:
        return f"{self._p}n:{name}:{kind}"

    async def _run(self, script, args: list) -> list:
        out = await script(args=[self._p, *args])
        return [x.decode() if isinstance(x, bytes) else x for x in out]

    @typed_redis
    async def ping(self) -> None:
        await self._r.ping()

    # --- pushes -------------------------------------------------------------------------------------------------
    @typed_redis
    async def lease(self, push_id: str, expiry: float, blobs: list[str]) -> str | None:
        """Protect blobs from GC until ``expiry``. Returns a blob GC is deleting right now, or None."""
        out = await self._run(self._lease, [push_id, repr(expiry), *blobs])
        return out[1] if out[0] == "doomed" else None

    @typed_redis
    async def release(self, push_id: str, blobs: list[str]) -> None:
        await self._run(self._release, [push_id, *blobs])

    @typed_redis
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
    @typed_redis
    async def digest_of(self, name: str, version: int) -> str | None:
        d = await self._r.hget(self._k(name, "v"), str(version))
        return _text(d) if d else None

    @typed_redis
    async def version_of(self, name: str, digest: str) -> int | None:
        v = await self._r.hget(self._k(name, "d"), digest)
        return int(v) if v else None

    @typed_redis
    async def manifest(self, name: str, digest: str) -> Manifest:
        return (await self.manifests(name, [digest]))[0]

    @typed_redis
    async def manifest_to_serve(self, name: str, digest: str) -> tuple[Manifest, bool]:
        """The manifest, and whether no blob at all was quarantined when it was read (in the same round trip): a
        read that is about to hand out its blobs need not ask the quarantine about each of them then."""
        manifests, quarantined = await self._manifests(name, [digest], count_quarantined=True)
        return manifests[0], quarantined == 0

    @typed_redis
    async def latest_to_serve(self, name: str) -> tuple[int, tuple[Manifest, bool] | None]:
        """(how many versions ``name`` has, yanked ones included; the latest version that is not yanked with
        whether no blob at all was quarantined, or None when there is none), in one round trip (``LATEST``)."""
        reply = await self._latest(args=[self._p, name])
        if len(reply) == 1:
            return int(reply[0]), None
        count, version, digest, raw, quarantined = reply
        if raw is None:
            raise NotFound(f"{name}@{_text(digest)} does not exist in this store")
        manifest = Manifest.from_json(_text(raw), version=int(version), yanked=False)
        return int(count), (manifest, int(quarantined) == 0)

    @typed_redis
    async def manifests(self, name: str, digests: Sequence[str]) -> list[Manifest]:
        """The manifests of ``name`` with these digests, in order, in one round trip. NotFound names the first
        digest the store does not have."""
        return (await self._manifests(name, digests))[0]

    async def _manifests(self, name: str, digests: Sequence[str], *,
                         count_quarantined: bool = False) -> tuple[list[Manifest], int | None]:
        if not digests:
            return [], None
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k(name, "m"), list(digests))
            pipe.hmget(self._k(name, "d"), list(digests))
            pipe.smembers(self._k(name, "y"))
            if count_quarantined:
                pipe.scard(self.quarantine.key)
            raws, versions, yanked, *quarantined = await pipe.execute()
        gone = {int(v) for v in yanked}
        out = []
        for digest, raw, version in zip(digests, raws, versions, strict=True):
            if raw is None or version is None:
                raise NotFound(f"{name}@{digest} does not exist in this store")
            out.append(Manifest.from_json(_text(raw), version=int(version), yanked=int(version) in gone))
        return out, int(quarantined[0]) if quarantined else None

    @typed_redis
    async def versions(self, name: str) -> dict[int, str]:
        raw = await self._r.hgetall(self._k(name, "v"))
        return {int(v): _text(d) for v, d in raw.items()}

    @typed_redis
    async def yanked(self, name: str) -> set[int]:
        return {int(v) for v in await self._r.smembers(self._k(name, "y"))}

    @typed_redis
    async def aliases(self, name: str) -> dict[str, Targets]:
        raw = await self._r.hgetall(self._k(name, "a"))
        return {_text(a): decode(_text(t)) for a, t in raw.items()}

    @typed_redis
    async def alias(self, name: str, alias: str) -> Targets | None:
        raw = await self._r.hget(self._k(name, "a"), alias)
        return decode(_text(raw)) if raw else None

    @typed_redis
    async def state(self, name: str, alias: str = "") -> tuple[dict[int, str], set[int], Targets | None]:
        """What resolving a ref of ``name`` needs, in one round trip: version -> digest, the yanked versions, and
        the targets of ``alias`` (None when there is no such alias, or none was asked for)."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k(name, "v"))
            pipe.smembers(self._k(name, "y"))
            if alias:
                pipe.hget(self._k(name, "a"), alias)
            replies = await pipe.execute()
        versions = {int(v): _text(d) for v, d in replies[0].items()}
        targets = decode(_text(replies[2])) if alias and replies[2] else None
        return versions, {int(v) for v in replies[1]}, targets

    @typed_redis
    async def names(self) -> list[str]:
        return sorted(_text(n) for n in await self._r.smembers(f"{self._p}names"))

    @typed_redis
    async def summaries(self, names: Sequence[str]) -> list[tuple[dict[int, str], set[int], dict[str, Targets]]]:
        """(versions, yanked, aliases) of each name, in order: one pipelined round trip per BATCH names."""
        out = []
        for i in range(0, len(names), BATCH):
            async with self._r.pipeline(transaction=False) as pipe:
                for name in names[i:i + BATCH]:
                    pipe.hgetall(self._k(name, "v"))
                    pipe.smembers(self._k(name, "y"))
                    pipe.hgetall(self._k(name, "a"))
                replies = await pipe.execute()
            for j in range(0, len(replies), 3):
                versions, yanked, aliases = replies[j:j + 3]
                out.append(({int(v): _text(d) for v, d in versions.items()}, {int(v) for v in yanked},
                            {_text(a): decode(_text(t)) for a, t in aliases.items()}))
        return out

    # --- aliases and yanks ----------------------------------------------------------------------------------------
    @typed_redis
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

    @typed_redis
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
    @typed_redis
    async def referenced(self, blobs: list[str]) -> list[bool]:
        return [bool(x) for x in await self._r.smismember(f"{self._p}refs", blobs)] if blobs else []

    @typed_redis
    async def gc_mark(self, candidates: list[str]) -> list[str]:
        return await self._run(self._gc_mark, candidates) if candidates else []

    @typed_redis
    async def gc_unmark(self, blobs: list[str]) -> None:
        if blobs:
            await self._r.zrem(f"{self._p}doomed", *blobs)

    # --- events ---------------------------------------------------------------------------------------------------
    @typed_redis
    async def last_event_id(self) -> str:
        info = await self._r.xinfo_stream(f"{self._p}events") if await self._r.exists(f"{self._p}events") else None
        return info["last-generated-id"].decode() if info else "0-0"

    @typed_redis
    async def read_events(self, cursor: str, block_ms: int, count: int = 100) -> list[StoreEvent]:
        out = await self._r.xread({f"{self._p}events": cursor}, count=count, block=block_ms)
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
                    time=float(f["time"]), detail=f.get("detail", ""),
                ))
        return events
