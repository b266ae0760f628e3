"""Garbage collection deletes only blobs that no version refers to and no push holds."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc

from adapterfleet.store.listing import GcReport
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc
from tests.helpers.synthetic import write_adapter


def keys(s3_client, bucket) -> set[str]:
    return {o["Key"].rsplit("/", 1)[-1] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def plant_orphan(s3_client, bucket, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    s3_client.put_object(Bucket=bucket, Key=f"sha256/{sha}", Body=data)
    return sha


def test_gc_deletes_orphans_and_never_a_referenced_blob(store, tmp_path, s3_client):
    bucket = store.config.s3.bucket
    c = store.client()
    v1 = c.push_dir(write_adapter(tmp_path / "1", seed=1), "demo").manifest
    v2 = c.push_dir(write_adapter(tmp_path / "2", seed=2), "demo").manifest
    c.yank("demo", 1)  # yanked versions still refer to their blobs
    referenced = {f.sha256 for m in (v1, v2) for f in m.files}
    orphans = {plant_orphan(s3_client, bucket, f"orphan {i}".encode()) for i in range(3)}

    dry = c.collect_garbage(dry_run=True, min_age=0)
    assert set(dry.deleted) == orphans and keys(s3_client, bucket) == referenced | orphans

    report = c.collect_garbage(min_age=0)
    assert report == GcReport(sorted(orphans), sum(len(f"orphan {i}".encode()) for i in range(3)),
                              kept_referenced=len(referenced), kept_leased=0, aborted_uploads=0)
    assert keys(s3_client, bucket) == referenced
    for ref in ("demo@2", f"demo@{v1.digest}"):
        c.fetch(ref)  # every version still whole


def test_gc_respects_the_grace_period(store, s3_client):
    orphan = plant_orphan(s3_client, store.config.s3.bucket, b"young orphan")
    report = store.client().collect_garbage()  # default grace: an hour
    assert orphan not in report.deleted and orphan in keys(s3_client, store.config.s3.bucket)


def test_gc_spares_blobs_leased_by_a_push_in_flight(store, tmp_path, s3_client):
    """A push that reuses an unreferenced blob keeps it alive through a concurrent GC."""
    bucket = store.config.s3.bucket
    src = write_adapter(tmp_path / "a", readme=None)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    weights_sha = plant_orphan(s3_client, bucket, files["adapter_model.safetensors"])  # e.g. left by a crash
    entries = [common_pb2.FileEntry(name=n, size=len(b), sha256=hashlib.sha256(b).hexdigest())
               for n, b in sorted(files.items())]
    go_on = threading.Event()

    def requests():
        yield store_pb2.PushRequest(header=store_pb2.PushHeader(name="demo", files=entries))
        yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file="adapter_config.json",
                                                          data=files["adapter_config.json"]))
        go_on.wait(30)  # the weights are not sent: the store already has them

    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    future = stub.Push.future(requests())
    time.sleep(0.5)  # the header is in: the lease is held
    report = store.client().collect_garbage(min_age=0)
    assert weights_sha not in report.deleted and report.kept_leased == 1
    go_on.set()
    out = future.result(30)
    assert out.created and out.manifest.version == 1
    assert store.client().collect_garbage(min_age=0).deleted == []
    store.client().fetch("demo@1")


def test_push_waits_for_gc_then_resends_a_blob_gc_deleted(store, tmp_path, s3_client, redis_client):
    """A blob that GC has marked doomed cannot be leased; the push waits, then sends it again."""
    bucket = store.config.s3.bucket
    src = write_adapter(tmp_path / "a", readme=None)
    sha = plant_orphan(s3_client, bucket, (src / "adapter_model.safetensors").read_bytes())
    redis_client.zadd(f"{store.config.redis_prefix}doomed", {sha: time.time()})
    result = {}
    t = threading.Thread(target=lambda: result.update(out=store.client().push_dir(src, "demo")))
    t.start()
    time.sleep(1.0)
    assert t.is_alive()  # waiting for GC
    s3_client.delete_object(Bucket=bucket, Key=f"sha256/{sha}")  # GC finishes its delete...
    redis_client.zrem(f"{store.config.redis_prefix}doomed", sha)  # ...and unmarks
    t.join(30)
    assert result["out"].manifest.version == 1
    _, got = store.client().fetch("demo@1")
    assert got["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()


def test_a_collection_whose_caller_goes_away_unmarks_a_blob_only_after_its_delete(store, s3_client, redis_client):
    """CollectGarbage's deadline passes while a blob's delete is in flight: the blob stays marked (a push of it
    waits) until the delete has ended, and no mark is left behind after it."""
    orphan = plant_orphan(s3_client, store.config.s3.bucket, b"orphan to delete slowly")
    blobs = store.core.blobs
    real_delete, gate, started = blobs.delete, threading.Event(), threading.Event()

    def slow_delete(sha):
        started.set()
        gate.wait(30)
        real_delete(sha)

    blobs.delete = slow_delete
    doomed = f"{store.config.redis_prefix}doomed"
    try:
        stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
        future = stub.CollectGarbage.future(store_pb2.CollectGarbageRequest(min_age_seconds=0), timeout=30)
        assert started.wait(10)
        future.cancel()  # the caller goes away while the delete is in flight
        time.sleep(0.3)  # the store's handler has been cancelled by now
        assert redis_client.zscore(doomed, orphan) is not None  # still marked: a push of it would wait
    finally:
        gate.set()
        blobs.delete = real_delete
    for _ in range(300):
        if redis_client.zscore(doomed, orphan) is None:
            break
        time.sleep(0.01)
    assert redis_client.zscore(doomed, orphan) is None and orphan not in keys(s3_client, store.config.s3.bucket)
