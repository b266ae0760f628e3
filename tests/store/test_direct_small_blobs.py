"""Small files a client verified once (configs, READMEs) are not fetched again for the next version with the same
bytes; downloads land in buffers that are not zero-filled first, and still hand over exactly the verified bytes.
Real moto S3 server and real store on free ports (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import time

import pytest

from adapterfleet.common.errors import ChecksumMismatch
from adapterfleet.store.direct_fetch import DirectFetchConfig, DirectFetcher
from adapterfleet.store.manifest import FileEntry
from adapterfleet.store.small_blobs import SmallBlobs
from tests.helpers.synthetic import write_adapter

FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def entry(data: bytes, name: str = "f") -> FileEntry:
    return FileEntry(name, len(data), hashlib.sha256(data).hexdigest())


def test_small_blobs_hand_out_copies_evict_the_least_recent_and_keep_nothing_too_large():
    kept = SmallBlobs(max_file=8, budget=16)
    a, b, c, big = b"aaaaaaaa", b"bbbbbbbb", b"cccccccc", b"x" * 9
    for data in (a, b, big):
        kept.put(entry(data), bytearray(data))
    assert len(kept) == 2 and kept.get(entry(big)) is None  # over max_file: not kept
    copy = kept.get(entry(a))
    assert copy == a and isinstance(copy, bytearray)
    copy[0] = 0
    assert kept.get(entry(a)) == a  # the kept bytes cannot be changed through a copy
    kept.put(entry(c), c)  # over budget: b (least recently used) goes, a (just read) stays
    assert kept.get(entry(b)) is None and kept.get(entry(a)) == a and kept.get(entry(c)) == c
    assert kept.get(FileEntry("f", 7, entry(a).sha256)) is None  # another size is another file


def test_a_version_sharing_small_files_gets_them_from_memory_not_from_s3(store, s3_client, tmp_path):
    """The second version has the same config and README bytes (other weights): only its weights are GET. The
    proof: with the config and README objects gone from S3, it still arrives whole, and nothing came through the
    store."""
    first = write_adapter(tmp_path / "v1", r=8, hidden=256, layers=2, seed=1)
    second = write_adapter(tmp_path / "v2", r=8, hidden=256, layers=2, seed=2)
    for name in ("adapter_config.json", "README.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    pusher = store.client()
    m1 = pusher.push_dir(first, "acme/shared").manifest
    m2 = pusher.push_dir(second, "acme/shared").manifest
    client = store.client()
    client.fetch(str(m1.key))
    assert client.direct.stats["cached"] == 0
    for name in ("adapter_config.json", "README.md"):
        s3_client.delete_object(Bucket=store.config.s3.bucket, Key=f"sha256/{m2.file(name).sha256}")
    progress: list[int] = []
    _, files = client.fetch(str(m2.key), progress=progress.append)
    assert files == {name: (second / name).read_bytes() for name in FILES}
    assert sum(progress) == m2.total_size
    assert client.direct.stats["cached"] == 2 and client.direct.stats["fallbacks"] == 0
    assert store.core.stats.bytes_sent == 0


def test_a_small_file_with_altered_bytes_is_refused_and_never_kept(store, s3_client, tmp_path):
    src = write_adapter(tmp_path / "src", r=8, hidden=256, layers=2, seed=3)
    manifest = store.client().push_dir(src, "acme/altered").manifest
    config = manifest.file("adapter_config.json")
    key = f"sha256/{config.sha256}"
    good = s3_client.get_object(Bucket=store.config.s3.bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=store.config.s3.bucket, Key=key, Body=good.replace(b"{", b" ", 1))  # same size
    client = store.client()
    with pytest.raises(ChecksumMismatch, match="adapter_config"):
        client.fetch(str(manifest.key))
    assert client.direct._small.get(config) is None  # what the fetcher keeps is the point here
    assert client.direct.stats["cached"] == 0


def test_small_file_memory_off_fetches_every_file(store, pushed_twice):
    client = store.client(direct=DirectFetchConfig(small_cache_bytes=0))
    for _ in range(2):
        client.fetch(pushed_twice)
    assert client.direct.stats["cached"] == 0 and client.direct.stats["files"] == 2 * len(FILES)


@pytest.fixture
def pushed_twice(store, tmp_path) -> str:
    src = write_adapter(tmp_path / "src", r=8, hidden=256, layers=2, seed=4)
    return str(store.client().push_dir(src, "acme/twice").manifest.key)


def test_a_download_fills_every_byte_of_its_uncleared_buffer(store, s3_client, tmp_path):
    """Bytes left over in reused memory never survive: the buffer handed over hashes to the manifest."""
    src = write_adapter(tmp_path / "src", r=16, hidden=1024, layers=6, seed=5)
    manifest = store.client().push_dir(src, "acme/filled").manifest
    weights = manifest.file("adapter_model.safetensors")
    with DirectFetcher(DirectFetchConfig(part_bytes=1 << 20, parallel_min_bytes=2 << 20, streams=2)) as fetcher:
        url, _ = _presign(store, weights.sha256)
        for _ in range(3):  # freed buffers are reused by the next allocation
            got = fetcher.fetch(url, weights.size, weights.sha256, deadline=time.monotonic() + 60)
            assert hashlib.sha256(got).hexdigest() == weights.sha256 and len(got) == weights.size


def _presign(store, sha256: str) -> tuple[str, float]:
    from adapterfleet.store.blobs.s3 import S3BlobStore

    signed = S3BlobStore(store.config.s3).presign(sha256)
    assert signed is not None
    return signed
