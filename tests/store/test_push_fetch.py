"""Push and fetch through a real store (real Redis, moto S3 server, gRPC on port 0)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.v1 import store_pb2, store_pb2_grpc
from tests.helpers.synthetic import write_adapter


def bucket_keys(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_identical_repush_returns_the_existing_version(store, tmp_path):
    src = write_adapter(tmp_path / "a")
    client = store.client()
    first = client.push_dir(src, "team/summarizer")
    again = client.push_dir(src, "team/summarizer")
    assert (first.created, again.created) == (True, False)
    assert again.manifest.version == first.manifest.version == 1
    assert again.manifest.digest == first.manifest.digest
    assert again.bytes_sent == 0  # nothing re-sent: every blob was already stored


def test_blobs_are_deduplicated_across_versions(store, tmp_path, s3_client):
    client = store.client()
    client.push_dir(write_adapter(tmp_path / "v1", seed=1), "demo")
    out = client.push_dir(write_adapter(tmp_path / "v2", seed=2), "demo")  # same config + README, new weights
    assert out.manifest.version == 2
    shared = sum(f.size for f in out.manifest.files if f.name != "adapter_model.safetensors")
    assert out.bytes_deduplicated == shared > 0
    # 3 blobs for v1, and only the new weights for v2
    assert len(bucket_keys(s3_client, store.config.s3.bucket)) == 4


def test_fifty_concurrent_pushes_get_versions_one_to_fifty(store, tmp_path):
    dirs = [write_adapter(tmp_path / f"a{i}", seed=i, readme=None) for i in range(50)]
    client = store.client()
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda d: client.push_dir(d, "busy"), dirs))
    assert sorted(o.manifest.version for o in outs) == list(range(1, 51))
    assert len({o.manifest.digest for o in outs}) == 50
    versions, _ = client.list_versions("busy")
    assert [m.version for m in versions] == list(range(1, 51))
    by_version = {o.manifest.version: o.manifest.digest for o in outs}
    assert all(by_version[m.version] == m.digest for m in versions)


def test_fetch_resumes_from_a_file_and_offset(store, tmp_path):
    src = write_adapter(tmp_path / "a", hidden=256, layers=4)
    client = store.client()
    manifest = client.push_dir(src, "demo").manifest
    weights = (src / "adapter_model.safetensors").read_bytes()
    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    offset = len(weights) // 3 + 7
    got: dict[str, bytearray] = {}
    msgs = list(stub.Fetch(store_pb2.FetchRequest(ref="demo@1", resume_file="adapter_model.safetensors",
                                                  resume_offset=offset, chunk_size=4096)))
    assert msgs[0].HasField("manifest") and msgs[0].manifest.digest == manifest.digest
    first = msgs[1].chunk
    assert (first.file, first.offset) == ("adapter_model.safetensors", offset)
    for m in msgs[1:]:
        got.setdefault(m.chunk.file, bytearray()).extend(m.chunk.data)
        assert len(m.chunk.data) <= 4096
    assert bytes(got["adapter_model.safetensors"]) == weights[offset:]
    # files after the resumed one come whole; files before it are skipped
    order = [f.name for f in manifest.files]
    after = order[order.index("adapter_model.safetensors") + 1:]
    assert sorted(got) == sorted(["adapter_model.safetensors", *after])


def test_fetch_by_every_ref_form(store, tmp_path):
    client = store.client()
    v1 = client.push_dir(write_adapter(tmp_path / "1", seed=1), "demo").manifest
    v2 = client.push_dir(write_adapter(tmp_path / "2", seed=2), "demo", alias="prod").manifest
    for ref, want in [("demo", v2), ("demo@1", v1), ("demo@prod", v2), (f"demo@{v1.digest}", v1),
                      ("demo@latest", v2)]:
        manifest, files = client.fetch(ref)
        assert manifest.digest == want.digest, ref
        assert hashlib.sha256(files["adapter_model.safetensors"]).hexdigest() == want.file(
            "adapter_model.safetensors").sha256


def test_blob_altered_in_s3_is_caught_on_pull_as_data_loss(store, tmp_path, s3_client):
    client = store.client()
    manifest = client.push_dir(write_adapter(tmp_path / "a"), "demo").manifest
    entry = manifest.file("adapter_model.safetensors")
    key = f"sha256/{entry.sha256}"
    body = bytearray(s3_client.get_object(Bucket=store.config.s3.bucket, Key=key)["Body"].read())
    body[-1] ^= 0xFF  # flip one bit of one weight
    s3_client.put_object(Bucket=store.config.s3.bucket, Key=key, Body=bytes(body))
    with pytest.raises(AdapterFleetError) as err:
        client.pull("demo@1", tmp_path / "out")
    assert err.value.code == "DATA_LOSS"
    assert "adapter_model.safetensors" in err.value.message and "re-push" in err.value.message
    assert not (tmp_path / "out").exists()  # nothing half-written is left behind


def test_unknown_refs_are_not_found_and_bad_refs_invalid(store):
    client = store.client()
    for ref, code in [("nope", "NOT_FOUND"), ("nope@3", "NOT_FOUND"), ("nope@prod", "NOT_FOUND"),
                      ("Bad Name", "INVALID_ARGUMENT"), ("x@0", "INVALID_ARGUMENT"),
                      ("x@sha256:abc", "INVALID_ARGUMENT"), ("../etc", "INVALID_ARGUMENT")]:
        with pytest.raises(AdapterFleetError) as err:
            client.resolve(ref)
        assert err.value.code == code, ref


def test_store_reports_health_and_reflection(store_config):
    """Reflection is off unless asked for (``--reflection``); tests/security_tls checks that it is off by default."""
    from dataclasses import replace

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from tests.helpers.servers import start_store

    address, _, stop = start_store(replace(store_config, reflection=True))
    channel = grpc.insecure_channel(address)
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="adapterfleet.v1.AdapterStore")).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    channel.close()
    stop()
    assert "adapterfleet.v1.AdapterStore" in names


def test_push_records_parent_and_base_model(store, tmp_path):
    client = store.client()
    v1 = client.push_dir(write_adapter(tmp_path / "1", seed=1), "demo").manifest
    v2 = client.push_dir(write_adapter(tmp_path / "2", seed=2), "demo", parent=str(v1.key)).manifest
    assert v2.parent == str(v1.key)
    assert v2.base_model.name_or_path == json.loads((tmp_path / "2" / "adapter_config.json").read_text())[
        "base_model_name_or_path"]


def test_a_blob_lost_after_the_check_is_a_typed_error_and_the_push_resends_everything(store, tmp_path, monkeypatch):
    from adapterfleet.common.errors import BlobMissing, FailedPrecondition
    from adapterfleet.common.grpc_errors import error_from_rpc
    from adapterfleet.v1 import common_pb2

    # on the wire: a skipped file the store lacks comes back as BlobMissing (a FailedPrecondition), message kept
    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    files = [common_pb2.FileEntry(name=n, size=10, sha256=c * 64)
             for n, c in (("adapter_config.json", "a"), ("adapter_model.safetensors", "b"))]
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(iter([store_pb2.PushRequest(header=store_pb2.PushHeader(name="team/lost", files=files))]))
    typed = error_from_rpc(err.value)
    assert isinstance(typed, BlobMissing) and isinstance(typed, FailedPrecondition)
    assert "was not sent" in typed.message

    # the client: the store "had" every blob when asked (then lost them): the push is retried sending every file
    client = store.client()
    real, asked = client._call, []

    def call(method, request):
        if method == "MissingBlobs" and not asked:
            asked.append(method)
            return store_pb2.MissingBlobsResponse()
        return real(method, request)

    monkeypatch.setattr(client, "_call", call)
    src = write_adapter(tmp_path / "a", seed=11)
    out = client.push_dir(src, "team/lost")
    assert asked and out.created and out.manifest.version == 1
    assert out.bytes_sent == sum(f.size for f in out.manifest.files)


@pytest.mark.parametrize("extra", ["empty", "duplicate"])
def test_an_empty_file_or_two_files_with_the_same_bytes_push_and_pull(store, tmp_path, extra):
    """The client sends no chunk for an empty file, and the bytes of two identical files once: the store takes
    both (it stores the empty blob itself), and a pull gives back every file."""
    src = write_adapter(tmp_path / "src", seed=1, readme="" if extra == "empty" else "same\n")
    if extra == "duplicate":
        (src / "NOTES.md").write_text("same\n")
    client = store.client()
    out = client.push_dir(src, "acme/extra")
    assert out.created and {f.name for f in out.manifest.files} == {p.name for p in src.iterdir()}
    assert client.push_dir(src, "acme/extra").manifest.version == 1  # again: the same version
    client.pull("acme/extra@1", tmp_path / "pulled")
    for f in src.iterdir():
        assert (tmp_path / "pulled" / f.name).read_bytes() == f.read_bytes()
