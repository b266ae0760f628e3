"""Presigned URLs in the Resolve answer: a caller about to fetch what it resolves (a worker's cold load) GETs the files
from S3 at once, with no Fetch call in between; every byte is still checked against the manifest, and whatever the
URLs cannot deliver comes through the store as before. Real moto S3 server and real store on free ports."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from adapterfleet.common.errors import ChecksumMismatch
from adapterfleet.store.direct_fetch import DirectFetchConfig, DirectFetcher
from tests.helpers.s3_blobs import flip_bit_in_blob
from tests.helpers.synthetic import write_adapter

FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def local_bytes(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


class CountingFetch:
    """Wraps a client's Fetch stub method: how many Fetch calls it made."""

    def __init__(self, client):
        self.calls = 0
        self._inner = client._stub.Fetch
        client._stub.Fetch = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._inner(*args, **kwargs)


@pytest.fixture
def pushed(store, tmp_path):
    src = write_adapter(tmp_path / "src", r=8, hidden=256, layers=4, seed=11)
    manifest = store.client().push_dir(src, "acme/resolved").manifest
    return src, manifest


def test_resolve_with_direct_answers_a_url_per_file_and_the_fetch_that_follows_makes_no_fetch_call(store, pushed):
    src, manifest = pushed
    client = store.client()
    fetches = CountingFetch(client)
    resolved = client.resolve("acme/resolved", direct=True)
    assert resolved.key == str(manifest.key)
    assert [u.file for u in resolved.urls] == [e.name for e in manifest.files]
    assert all(u.expires_in_s > 0 and "X-Amz-Signature" in u.url for u in resolved.urls)
    got_manifest, files = client.fetch(resolved.key)
    assert got_manifest.digest == manifest.digest and files == local_bytes(src)
    assert fetches.calls == 0
    assert store.core.stats.bytes_sent == 0
    _, again = client.fetch(resolved.key)  # the URLs are used once: a later fetch asks the store again
    assert again == files and fetches.calls == 1


def test_urls_resolved_by_the_asyncio_client_and_handed_over_spare_the_fetch_call(store, pushed):
    """A worker resolves on its event loop (AsyncStoreClient) and fetches in a thread (StoreClient): keep_urls carries
    the answer's URLs across, so the cold load still makes no Fetch call."""
    from adapterfleet.store.aio_client import AsyncStoreClient

    src, manifest = pushed
    client = store.client()
    fetches = CountingFetch(client)

    async def resolve():
        aio = AsyncStoreClient(store.address)
        try:
            return await aio.resolve("acme/resolved", direct=True), await aio.resolve("acme/resolved")
        finally:
            await aio.close()

    resolved, plain = asyncio.run(resolve())
    assert plain.urls == () and [u.file for u in resolved.urls] == [e.name for e in manifest.files]
    client.keep_urls(plain)  # an answer without URLs changes nothing
    client.keep_urls(resolved)
    assert client.fetch(resolved.key)[1] == local_bytes(src)
    assert fetches.calls == 0 and store.core.stats.bytes_sent == 0


def test_a_plain_resolve_carries_no_urls_and_issues_none(store, pushed):
    client = store.client()
    assert client.resolve("acme/resolved").urls == ()
    assert store.core.stats.urls_issued == 0


def test_a_client_with_direct_reads_off_ignores_the_urls(store, pushed):
    src, manifest = pushed
    client = store.client(direct=DirectFetchConfig(enabled=False))
    fetches = CountingFetch(client)
    resolved = client.resolve("acme/resolved", direct=True)
    assert client.fetch(resolved.key)[1] == local_bytes(src)
    assert fetches.calls == 1 and store.core.stats.bytes_sent == manifest.total_size


def test_urls_that_expired_before_the_fetch_fall_back_to_a_fetch_call(store, pushed):
    src, manifest = pushed
    client = store.client()
    ticks = itertools.count(step=1000.0)  # every look at the clock is 1000 s later: the URLs expired unused
    client.direct = DirectFetcher(client.direct.cfg, clock=lambda: float(next(ticks)))
    fetches = CountingFetch(client)
    resolved = client.resolve("acme/resolved", direct=True)
    assert resolved.urls
    assert client.fetch(resolved.key)[1] == local_bytes(src)
    # the Fetch answered URLs again (expired too, on this clock), and its resumed stream carried the bytes
    assert fetches.calls == 2
    assert store.core.stats.bytes_sent == manifest.total_size


def test_altered_bytes_behind_a_resolved_url_are_refused_and_then_quarantined(store, s3_client, pushed):
    _, manifest = pushed
    flip_bit_in_blob(s3_client, store, manifest.file("adapter_model.safetensors").sha256)
    client = store.client()
    resolved = client.resolve("acme/resolved", direct=True)
    with pytest.raises(ChecksumMismatch, match="not the bytes that were pushed"):
        client.fetch(resolved.key)
    # the client reported the blob; the store re-read it, quarantined it, and now answers no URL for it
    assert client.resolve("acme/resolved", direct=True).urls == ()
    with pytest.raises(ChecksumMismatch, match="quarantined"):
        client.fetch(resolved.key)


def _smismember_calls(redis_client) -> int:
    return int(redis_client.info("commandstats").get("cmdstat_smismember", {}).get("calls", 0))


def test_an_empty_quarantine_costs_a_resolve_no_round_trip_and_a_full_one_is_still_asked(store, redis_client,
                                                                                        pushed):
    """The quarantine's size comes in the manifest's own round trip: empty, the URLs need no check of their own;
    with any blob quarantined (here one of no version), each file is asked about as before, and clean ones still
    get URLs."""
    _, manifest = pushed
    client = store.client()
    before = _smismember_calls(redis_client)
    for ref in ("acme/resolved", "acme/resolved@1", f"acme/resolved@{manifest.digest}"):
        assert len(client.resolve(ref, direct=True).urls) == len(manifest.files)
    assert _smismember_calls(redis_client) == before
    redis_client.sadd(f"{store.config.redis_prefix}quarantine", "0" * 64)  # some other blob, bad
    assert len(client.resolve("acme/resolved", direct=True).urls) == len(manifest.files)
    assert _smismember_calls(redis_client) == before + 1
