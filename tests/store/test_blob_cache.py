"""The store's in-memory blob cache: served without S3, never stale, bounded, emptied by GC."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter


@pytest.fixture
def cached_store(store_config):
    cfg = replace(store_config, blob_cache_bytes=64 << 10, blob_cache_max_item=32 << 10)
    address, core, stop = start_store(cfg)
    from adapterfleet.store.client import StoreClient
    from adapterfleet.store.direct_fetch import DirectFetchConfig

    client = StoreClient(address, direct=DirectFetchConfig(enabled=False))  # the cache serves the store's stream
    yield client, core, cfg
    client.close()
    stop()


def test_pushed_blobs_are_served_from_memory(cached_store, tmp_path, s3_client):
    client, core, cfg = cached_store
    src = write_adapter(tmp_path / "a")  # every file well under max_item
    manifest = client.push_dir(src, "demo").manifest
    for f in manifest.files:  # gone from S3, still served: they came from the cache
        s3_client.delete_object(Bucket=cfg.s3.bucket, Key=f"sha256/{f.sha256}")
    _, files = client.fetch("demo@1")
    assert all(files[p.name] == p.read_bytes() for p in src.iterdir())
    assert core.blobs.hits == len(manifest.files)


def test_big_blobs_bypass_the_cache_and_the_budget_holds(cached_store, tmp_path):
    client, core, cfg = cached_store
    client.push_dir(write_adapter(tmp_path / "big", hidden=1024, layers=2), "big")  # weights > max_item
    for i in range(10):
        client.push_dir(write_adapter(tmp_path / f"s{i}", seed=i), f"small-{i}")
    assert core.blobs.nbytes <= cfg.blob_cache_bytes
    client.fetch("big@1")
    assert core.blobs.misses >= 1


def test_gc_delete_evicts_from_the_cache(cached_store, s3_client):
    import hashlib

    client, core, cfg = cached_store
    data = b"orphan"
    sha = hashlib.sha256(data).hexdigest()
    core.blobs.put(sha, data)
    s3_client.put_object(Bucket=cfg.s3.bucket, Key=f"sha256/{sha}", Body=data)
    assert sha in client.collect_garbage(min_age=0).deleted
    assert core.blobs.get(sha) is None


def test_dedupe_asks_s3_not_the_cache(cached_store, tmp_path, s3_client):
    """S3 lost its data while the store's cache still holds every blob: a re-push (same name or another) sends the
    files again and puts them back in S3, instead of making a version whose blobs S3 does not have."""
    client, core, cfg = cached_store
    src = write_adapter(tmp_path / "a")
    manifest = client.push_dir(src, "demo").manifest
    total = sum(f.size for f in manifest.files)
    for f in manifest.files:
        s3_client.delete_object(Bucket=cfg.s3.bucket, Key=f"sha256/{f.sha256}")
    assert all(core.blobs.get(f.sha256) is not None for f in manifest.files)  # the cache still has them

    again = client.push_dir(src, "demo")
    other = client.push_dir(src, "demo-copy")
    assert (again.bytes_sent, again.bytes_deduplicated) == (total, 0)
    assert other.created and other.bytes_deduplicated == total  # now S3 has them again: deduplicated for real
    for f in manifest.files:
        s3_client.head_object(Bucket=cfg.s3.bucket, Key=f"sha256/{f.sha256}")

    address, _, stop = start_store(cfg)  # a cold store (empty cache) serves both versions from S3
    from adapterfleet.store.client import StoreClient

    cold = StoreClient(address)
    try:
        for ref in ("demo@1", "demo-copy@1"):
            _, files = cold.fetch(ref)
            assert all(files[p.name] == p.read_bytes() for p in src.iterdir())
    finally:
        cold.close()
        stop()


def test_a_read_of_bad_bytes_never_puts_them_in_memory_over_a_good_re_push(tmp_path):
    """A fetch streams a blob gone bad in the backend while it is reported and pushed again: the memory keeps the
    re-push's good bytes (the read's fill is checked against the blob's name) and serves them."""
    import hashlib
    import os

    from adapterfleet.store.blobs.cache import CachedBlobStore
    from adapterfleet.store.blobs.local import LocalBlobStore

    inner = LocalBlobStore(tmp_path / "blobs")
    inner.ensure()
    good = os.urandom(3 << 20)
    sha = hashlib.sha256(good).hexdigest()
    bad = bytearray(good)
    bad[123] ^= 1
    writer = inner.writer(hashlib.sha256(bad).hexdigest(), len(bad))
    writer.write(bytes(bad))
    writer.commit()
    inner._path(sha).parent.mkdir(parents=True, exist_ok=True)
    os.replace(inner._path(hashlib.sha256(bad).hexdigest()), inner._path(sha))  # bit rot under the good name
    cache = CachedBlobStore(inner, budget=64 << 20, max_item=16 << 20)
    slow = cache.read(sha, 0, chunk_size=1 << 20)  # a slow client's fetch, under way
    next(slow)
    assert not cache.holds_intact(sha)  # another client reported the bytes
    again = cache.writer(sha, len(good))  # the re-push
    again.write(good)
    again.commit()
    b"".join(slow)  # the slow fetch ends
    assert b"".join(cache.read(sha)) == good
