"""A bare name resolves to its latest version that is not yanked in one round trip (the LATEST script): numbers
compare as numbers (10 after 9, not after 1), yanked versions are skipped, the quarantine's size comes along, and a
name with no version, or with every version yanked, is NOT_FOUND saying which. Real redis-server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from adapterfleet.common.errors import NotFound
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.manifest import FileEntry, Manifest


def _manifest(name: str, n: int) -> Manifest:
    return Manifest(name, (FileEntry("adapter_model.safetensors", n, f"{n:064x}"),))


async def _seed(r: aioredis.Redis, prefix: str, name: str, versions: range, yanked: set[int]) -> dict[int, str]:
    digests = {}
    for v in versions:
        m = _manifest(name, v)
        digests[v] = m.digest
        await r.hset(f"{prefix}n:{name}:v", str(v), m.digest)
        await r.hset(f"{prefix}n:{name}:d", m.digest, str(v))
        await r.hset(f"{prefix}n:{name}:m", m.digest, m.to_json())
    for v in yanked:
        await r.sadd(f"{prefix}n:{name}:y", str(v))
    return digests


def test_latest_is_the_highest_number_not_yanked_in_one_script(redis_server):
    async def scenario():
        r = aioredis.Redis.from_url(redis_server.url)
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        index = RedisIndex(r, prefix)
        try:
            digests = await _seed(r, prefix, "acme/x", range(1, 12), yanked={11})
            count, (manifest, clean) = await index.latest_to_serve("acme/x")
            assert count == 11 and manifest.version == 10 and manifest.digest == digests[10] and clean
            assert not manifest.yanked
            await r.sadd(f"{prefix}quarantine", "f" * 64)  # any blob quarantined: the caller checks its files
            assert (await index.latest_to_serve("acme/x"))[1][1] is False
            await _seed(r, prefix, "acme/gone", range(1, 3), yanked={1, 2})
            assert await index.latest_to_serve("acme/gone") == (2, None)
            assert await index.latest_to_serve("acme/never") == (0, None)
            await r.hdel(f"{prefix}n:acme/x:m", digests[10])  # an index missing a manifest says so
            with pytest.raises(NotFound, match="does not exist in this store"):
                await index.latest_to_serve("acme/x")
        finally:
            await r.aclose()

    asyncio.run(scenario())


def test_the_store_says_why_a_name_has_no_latest(store, tmp_path):
    from adapterfleet.common.errors import AdapterFleetError
    from tests.helpers.synthetic import write_adapter

    client = store.client()
    with pytest.raises(AdapterFleetError, match="does not exist; `adapterfleet ls` lists adapters"):
        client.resolve("acme/none")
    client.push_dir(write_adapter(tmp_path / "a", seed=1), "acme/one")
    client.yank("acme/one", 1)
    with pytest.raises(AdapterFleetError, match="every version of acme/one is yanked"):
        client.resolve("acme/one")
