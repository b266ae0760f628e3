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

    client = StoreClient(address)
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
    assert core.blobs._bytes <= cfg.blob_cache_bytes
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
