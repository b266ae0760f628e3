"""Direct blob reads: with an S3 backend a fetch answers presigned URLs, and clients GET the bytes from S3 themselves,
verified by sha256 on arrival; the store's stream is the fallback (expired URL, unreachable endpoint, local
backend). Real moto S3 server and real store on free ports (tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time

import grpc
import pytest

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.common.errors import ChecksumMismatch
from adapterfleet.store.client import StoreClient
from adapterfleet.store.direct_fetch import DirectFetchConfig, DirectFetcher, DirectUnavailable
from adapterfleet.v1 import store_pb2, store_pb2_grpc
from tests.helpers.s3_blobs import flip_bit_in_blob
from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter

FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def local_bytes(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


def fetch_chunks(address: str, key: str, direct: bool) -> tuple[int, int]:
    """(chunk messages, url messages) of one raw Fetch call."""
    with grpc.insecure_channel(address) as channel:
        stub = store_pb2_grpc.AdapterStoreStub(channel)
        msgs = list(stub.Fetch(store_pb2.FetchRequest(ref=key, direct=direct), timeout=30))
    return sum(m.HasField("chunk") for m in msgs), sum(m.HasField("urls") for m in msgs)


@pytest.fixture
def pushed(store, tmp_path):
    src = write_adapter(tmp_path / "src", r=8, hidden=256, layers=4, seed=3)
    manifest = store.client().push_dir(src, "acme/direct").manifest
    return src, manifest


def test_fetch_and_pull_by_url_give_identical_bytes_and_no_byte_streams_through_the_store(store, pushed, tmp_path):
    src, manifest = pushed
    assert fetch_chunks(store.address, str(manifest.key), direct=True) == (0, 1)  # URLs, no chunks
    client = store.client()
    got_manifest, files = client.fetch("acme/direct@1")
    assert got_manifest.digest == manifest.digest
    assert files == local_bytes(src)
    dest = tmp_path / "pulled"
    client.pull("acme/direct@1", dest)
    assert local_bytes(dest) == local_bytes(src)
    assert store.core.stats.bytes_sent == 0  # not one file byte crossed the store
    assert store.core.stats.urls_issued == 2 * len(FILES) + len(FILES)
    assert client.direct.stats["files"] == 2 * len(FILES) and client.direct.stats["fallbacks"] == 0


def test_large_file_by_parallel_ranged_gets(store, tmp_path):
    src = write_adapter(tmp_path / "big", r=16, hidden=1024, layers=12, seed=4)  # ~3 MB of tensors
    manifest = store.client().push_dir(src, "acme/big").manifest
    cfg = DirectFetchConfig(part_bytes=1 << 20, parallel_min_bytes=2 << 20, streams=3)
    client = store.client(direct=cfg)
    progress: list[int] = []
    _, files = client.fetch(str(manifest.key), progress=progress.append)
    assert files == local_bytes(src)
    assert sum(progress) == manifest.total_size
    assert store.core.stats.bytes_sent == 0


def test_a_file_hashed_beside_its_reader_checks_out_and_a_changed_one_is_refused(store, s3_client, tmp_path):
    """One GET of a file above HASH_THREAD_BYTES: a second thread hashes behind the reader."""
    from adapterfleet.store.direct_fetch import HASH_THREAD_BYTES

    src = write_adapter(tmp_path / "nine", r=16, hidden=1024, layers=36, seed=8)
    assert (src / "adapter_model.safetensors").stat().st_size > HASH_THREAD_BYTES
    manifest = store.client().push_dir(src, "acme/nine").manifest
    progress: list[int] = []
    assert store.client().fetch(str(manifest.key), progress=progress.append)[1] == local_bytes(src)
    assert sum(progress) == manifest.total_size
    key = f"sha256/{manifest.file('adapter_model.safetensors').sha256}"
    body = bytearray(s3_client.get_object(Bucket=store.config.s3.bucket, Key=key)["Body"].read())
    body[-1] ^= 0x80  # the very last byte
    s3_client.put_object(Bucket=store.config.s3.bucket, Key=key, Body=bytes(body))
    with pytest.raises(ChecksumMismatch):
        store.client().fetch(str(manifest.key))
    assert store.core.stats.bytes_sent == 0


def test_an_expired_url_falls_back_to_the_store_stream(store, pushed):
    src, manifest = pushed
    client = store.client()
    ticks = itertools.count(step=1000.0)  # every look at the clock is 1000 s later: the URLs expired unused
    client.direct = DirectFetcher(client.direct.cfg, clock=lambda: float(next(ticks)))
    _, files = client.fetch(str(manifest.key))
    assert files == local_bytes(src)
    assert store.core.stats.urls_issued == len(FILES)
    assert store.core.stats.bytes_sent == manifest.total_size  # every byte came through the store instead
    assert client.direct.stats["files"] == 0 and client.direct.stats["fallbacks"] == len(FILES)


def test_a_one_second_url_is_not_used_after_it_expired(store_config, tmp_path):
    cfg = dataclasses.replace(store_config, s3=dataclasses.replace(store_config.s3, presign_expiry_s=1))
    address, core, stop = start_store(cfg)
    try:
        src = write_adapter(tmp_path / "src", seed=9)
        with StoreClient(address, direct=DirectFetchConfig(expiry_margin_s=0.0)) as client:
            manifest = client.push_dir(src, "acme/short").manifest
            with grpc.insecure_channel(address) as channel:
                answer = list(store_pb2_grpc.AdapterStoreStub(channel).Fetch(
                    store_pb2.FetchRequest(ref=str(manifest.key), direct=True), timeout=30))
            received = time.monotonic()
            url = answer[1].urls.files[1]
            assert url.expires_in_s == 1.0 and "X-Amz-Expires=1" in url.url
            time.sleep(1.1)
            entry = manifest.file(url.file)
            with pytest.raises(DirectUnavailable, match="expired"):
                client.direct.fetch(url.url, entry.size, entry.sha256,
                                    deadline=client.direct.deadline(
                                        _blob_url(url), received))
            _, files = client.fetch(str(manifest.key))  # a fresh answer carries fresh URLs
            assert files == local_bytes(src)
            assert core.stats.bytes_sent == 0
    finally:
        stop()


def _blob_url(pb):
    from adapterfleet.store.direct_fetch import BlobUrl

    return BlobUrl(pb.file, pb.url, pb.expires_in_s)


def test_an_unreachable_s3_endpoint_falls_back_and_is_not_retried_at_once(store_config, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: S3 as the client cannot reach it
    cfg = dataclasses.replace(store_config, s3=dataclasses.replace(store_config.s3, presign_endpoint_url=closed))
    address, core, stop = start_store(cfg)
    try:
        src = write_adapter(tmp_path / "src", seed=5)
        with StoreClient(address) as client:
            manifest = client.push_dir(src, "acme/far").manifest
            for _ in range(2):
                _, files = client.fetch(str(manifest.key))
                assert files == local_bytes(src)
            assert core.stats.bytes_sent == 2 * manifest.total_size
            assert client.direct.stats["files"] == 0
            assert list(client.direct._down_until) == [closed.removeprefix("http://")]
    finally:
        stop()


def test_a_url_answering_an_error_status_is_direct_unavailable(store, s3_server):
    """A URL S3 answers with an error (here 404: an object that does not exist) is a reason to fall back, never
    bytes handed over."""
    from adapterfleet.store.blobs.s3 import S3BlobStore

    url, _ = S3BlobStore(store.config.s3).presign("0" * 64)
    with DirectFetcher() as fetcher, pytest.raises(DirectUnavailable, match="HTTP 404"):
        fetcher.fetch(url, 10, "0" * 64, deadline=time.monotonic() + 60)


def test_an_empty_object_and_a_large_one_come_back_as_plain_bytearrays(store, s3_client):
    """The buffer is made only once a GET is on its way; an empty object sends no bytes and still gives b"", and
    the bytearray handed over is the caller's own (nothing still holds a view of it: it can grow)."""
    from adapterfleet.store.blobs.s3 import S3BlobStore

    blobs = S3BlobStore(store.config.s3)
    for body in (b"", bytes(range(256)) * (40 << 10)):  # 10 MiB: past the size hashed in a thread of its own
        digest = hashlib.sha256(body).hexdigest()
        s3_client.put_object(Bucket=store.config.s3.bucket, Key=f"sha256/{digest}", Body=body)
        url, _ = blobs.presign(digest)
        with DirectFetcher(DirectFetchConfig(streams=1)) as fetcher:
            got = fetcher.fetch(url, len(body), digest, deadline=time.monotonic() + 60)
        assert type(got) is bytearray and got == body
        got += b"!"


def test_altered_bytes_behind_the_url_are_data_loss_and_nothing_is_written(store, pushed, s3_client, tmp_path):
    _, manifest = pushed
    flip_bit_in_blob(s3_client, store, manifest.file("adapter_model.safetensors").sha256)
    client = store.client()
    with pytest.raises(ChecksumMismatch, match=r"adapter_model\.safetensors") as err:
        client.fetch(str(manifest.key))
    assert err.value.code == "DATA_LOSS"
    dest = tmp_path / "never"
    with pytest.raises(ChecksumMismatch):
        client.pull(str(manifest.key), dest)
    assert not dest.exists() and list(tmp_path.glob(".never.*")) == []
    assert store.core.stats.bytes_sent == 0  # refused, not retried through the store


def test_an_object_of_another_size_is_data_loss(store, pushed, s3_client):
    _, manifest = pushed
    entry = manifest.file("adapter_model.safetensors")
    key = f"sha256/{entry.sha256}"
    body = s3_client.get_object(Bucket=store.config.s3.bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=store.config.s3.bucket, Key=key, Body=body + b"\0" * 17)
    with pytest.raises(ChecksumMismatch, match="bytes"):
        store.client().fetch(str(manifest.key))


def test_the_local_backend_gives_no_urls(store_config, tmp_path):
    cfg = dataclasses.replace(store_config, s3=None)
    address, core, stop = start_store(cfg)
    try:
        src = write_adapter(tmp_path / "src", seed=6)
        with StoreClient(address) as client:
            manifest = client.push_dir(src, "acme/local").manifest
            chunks, urls = fetch_chunks(address, str(manifest.key), direct=True)
            assert urls == 0 and chunks >= len(FILES)
            _, files = client.fetch(str(manifest.key))
            assert files == local_bytes(src)
        assert core.stats.urls_issued == 0
    finally:
        stop()


def test_presigning_off_streams_through_the_store(store_config, tmp_path):
    cfg = dataclasses.replace(store_config, s3=dataclasses.replace(store_config.s3, presign_expiry_s=0))
    address, core, stop = start_store(cfg)
    try:
        src = write_adapter(tmp_path / "src", seed=7)
        with StoreClient(address) as client:
            manifest = client.push_dir(src, "acme/off").manifest
            assert fetch_chunks(address, str(manifest.key), direct=True)[1] == 0
            assert client.fetch(str(manifest.key))[1] == local_bytes(src)
        assert core.stats.urls_issued == 0 and core.stats.bytes_sent > 0
    finally:
        stop()


def test_a_client_with_direct_reads_off_never_asks_for_urls(store, pushed):
    src, manifest = pushed
    client = store.client(direct=DirectFetchConfig(enabled=False))
    assert client.fetch(str(manifest.key))[1] == local_bytes(src)
    assert store.core.stats.urls_issued == 0


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    import warnings

    from tests.helpers.models import make_base_model, make_peft_adapter

    root = tmp_path_factory.mktemp("direct_worker")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        return base, make_peft_adapter(base, root / "adapter", seed=2, r=4, target_modules=["q_proj", "v_proj"])


def test_a_worker_without_s3_credentials_loads_by_url_and_serves_the_same_scores(store, tiny_llama, tmp_path,
                                                                               monkeypatch):
    from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
    from adapterfleet.worker.config import WorkerConfig
    from tests.helpers.servers import start_worker

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    base, adapter = tiny_llama
    manifest = store.client().push_dir(adapter, "acme/tiny").manifest
    key = str(manifest.key)
    scores = {}
    for direct in (True, False):
        cfg = WorkerConfig(base_model=str(base), store=store.address, max_slots=2,
                           disk_dir=str(tmp_path / f"cache-{direct}"))
        if not direct:  # the same load through the store's stream, for comparison
            cfg = dataclasses.replace(cfg, direct=DirectFetchConfig(enabled=False))
        address, _, stop = start_worker(cfg)
        try:
            with grpc.insecure_channel(address) as channel:
                reply = worker_pb2_grpc.WorkerStub(channel).Score(
                    worker_pb2.ScoreRequest(adapter=key, token_ids=[1, 2, 3, 4]), timeout=60)
            scores[direct] = list(reply.logprobs)
        finally:
            stop()
        if direct:
            assert store.core.stats.bytes_sent == 0 and store.core.stats.urls_issued == len(manifest.files)
    assert store.core.stats.bytes_sent > 0  # the second worker streamed
    assert scores[True] == scores[False]


def test_the_sdk_pulls_into_its_cache_by_url(store, pushed, tmp_path):
    from adapterfleet.sdk.store import AdapterStore

    src, manifest = pushed
    with AdapterStore(store.address, cache_dir=tmp_path / "cache") as sdk:
        path = sdk.pull("acme/direct@1")
        assert local_bytes(path) == local_bytes(src)
        assert sdk.client.direct.stats["files"] == len(FILES)
    assert store.core.stats.bytes_sent == 0
    with AdapterStore(store.address, cache_dir=tmp_path / "other", direct=DirectFetchConfig(enabled=False)) as sdk:
        assert local_bytes(sdk.pull("acme/direct@1")) == local_bytes(src)
    assert store.core.stats.bytes_sent == manifest.total_size


def test_worker_serve_no_direct_blobs_turns_direct_reads_off():
    from adapterfleet.cli.flags import parse_layered
    from adapterfleet.cli.main import build_parser
    from adapterfleet.cli.worker_serve import config_from_args

    base = ["worker", "serve", "--insecure", "--base-model", "/m"]
    assert config_from_args(parse_layered(build_parser(), base, {}), "127.0.0.1:1").direct.enabled
    args = parse_layered(build_parser(), [*base, "--no-direct-blobs"], {})
    assert not config_from_args(args, "127.0.0.1:1").direct.enabled
    args = parse_layered(build_parser(), base, {"ADAPTERFLEET_NO_DIRECT_BLOBS": "1"})
    assert not config_from_args(args, "127.0.0.1:1").direct.enabled


def test_a_url_is_reused_for_half_its_lifetime_then_signed_again(store, monkeypatch):
    """Signing is local work on every cold load's Resolve: a URL goes out again, with the seconds it has left,
    until half its lifetime has passed; a deleted blob's URL is forgotten."""
    import dataclasses

    from adapterfleet.store.blobs import s3 as s3_blobs

    now = [1000.0]
    monkeypatch.setattr(s3_blobs.time, "monotonic", lambda: now[0])
    blobs = s3_blobs.S3BlobStore(dataclasses.replace(store.config.s3, presign_expiry_s=120))
    first, seconds = blobs.presign("a" * 64)
    assert seconds == 120.0
    now[0] += 59.5
    assert blobs.presign("a" * 64) == (first, 60.5)  # the same URL, with what it has left
    assert blobs.presign("b" * 64)[0] != first  # another blob: its own URL
    now[0] += 1.0  # past half its lifetime: a fresh URL
    fresh, seconds = blobs.presign("a" * 64)
    assert seconds == 120.0 and blobs.presign("a" * 64) == (fresh, 120.0)
    now[0] += 1.0
    assert blobs.presign("a" * 64)[1] == 119.0
    blobs.delete("a" * 64)  # (there is no such object; deleting it is still fine)
    assert blobs.presign("a" * 64)[1] == 120.0  # signed again
