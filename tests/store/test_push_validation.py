"""Every push-time refusal: the right status, a message that says what to do, and nothing visible after it."""

from __future__ import annotations

import hashlib
import json
import struct

import grpc
import numpy as np
import pytest

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc
from tests.helpers.synthetic import lora_config, lora_tensors, write_adapter


def assert_nothing_visible(store, s3_client, name="bad"):
    client = store.client()
    with pytest.raises(AdapterFleetError) as err:
        client.resolve(name)
    assert err.value.code == "NOT_FOUND"
    assert s3_client.list_objects_v2(Bucket=store.config.s3.bucket).get("KeyCount", 0) == 0


def push_refused(store, src, code="INVALID_ARGUMENT", name="bad") -> str:
    with pytest.raises(AdapterFleetError) as err:
        store.client().push_dir(src, name)
    assert err.value.code == code, err.value.message
    return err.value.message


CASES = {
    "pickle weights": (
        lambda d: (write_adapter(d), (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")),
        ["adapter_model.bin", "pickle", "safetensors", "safe_serialization=True"],
    ),
    "pickle extra file": (
        lambda d: (write_adapter(d), (d / "optimizer.pt").write_bytes(b"\x80\x04junk")),
        ["optimizer.pt", "pickle"],
    ),
    "unsupported peft type": (
        lambda d: write_adapter(d, config={"peft_type": "IA3", "target_modules": ["q_proj"]}),
        ["IA3", "LORA"],
    ),
    "config is not json": (
        lambda d: (write_adapter(d), (d / "adapter_config.json").write_text("{not json")),
        ["adapter_config.json"],
    ),
    "missing rank": (
        lambda d: write_adapter(d, config={k: v for k, v in lora_config().items() if k != "r"}),
        ["missing required key(s): r"],
    ),
    "rank above the store's max_rank": (
        lambda d: write_adapter(d, r=128, hidden=128, layers=1),
        ["128", "max_rank 64"],
    ),
    "tensor rank disagrees with config": (
        lambda d: write_adapter(d, config=lora_config(r=8), tensors=lora_tensors(r=4)),
        ["lora_A", "[4, 32]", "8"],
    ),
    "tensor of an untargeted module": (
        lambda d: write_adapter(d, config=lora_config(targets=("q_proj",)),
                                tensors=lora_tensors(targets=("q_proj", "k_proj"))),
        ["k_proj", "target_modules"],
    ),
    "lora_B missing": (
        lambda d: write_adapter(d, tensors={k: v for k, v in lora_tensors().items()
                                            if not k.endswith("layers.0.self_attn.q_proj.lora_B.weight")}),
        ["lora_B", "layers.0.self_attn.q_proj"],
    ),
    "weights file missing": (
        lambda d: (write_adapter(d), (d / "adapter_model.safetensors").unlink()),
        ["adapter_model.safetensors"],
    ),
    "unknown file type": (
        lambda d: (write_adapter(d), (d / "model.onnx").write_bytes(b"x")),
        ["model.onnx", "README.md"],
    ),
    "safetensors header claims more than the file": (
        lambda d: (write_adapter(d), (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")),
        ["header"],
    ),
    "safetensors offsets out of range": (
        lambda d: (write_adapter(d), _truncate_data(d / "adapter_model.safetensors")),
        ["adapter_model"] ,
    ),
}


def _truncate_data(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:-16])


@pytest.mark.parametrize("case", sorted(CASES))
def test_push_refusal(case, store, tmp_path, s3_client):
    make, needles = CASES[case]
    make(tmp_path / "a")
    message = push_refused(store, tmp_path / "a")
    for needle in needles:
        assert needle in message, (needle, message)
    assert_nothing_visible(store, s3_client)
    # the store is still up and accepts a good push afterwards
    assert store.client().push_dir(write_adapter(tmp_path / "good"), "good").manifest.version == 1


def test_file_that_is_too_big_is_refused_before_any_byte_is_sent(store, tmp_path, s3_client):
    big = 300 << 20  # the test store's limit is 256 MiB
    header = store_pb2.PushHeader(name="bad", files=[
        common_pb2.FileEntry(name="adapter_config.json", size=10, sha256="0" * 64),
        common_pb2.FileEntry(name="adapter_model.safetensors", size=big, sha256="1" * 64)])
    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(iter([store_pb2.PushRequest(header=header)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in err.value.details() and str(big) in err.value.details()
    assert_nothing_visible(store, s3_client)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x\x00y"])
def test_file_names_with_paths_are_refused(name, store, s3_client):
    header = store_pb2.PushHeader(name="bad", files=[
        common_pb2.FileEntry(name=name, size=1, sha256="0" * 64)])
    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(iter([store_pb2.PushRequest(header=header)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_visible(store, s3_client)


def test_bytes_that_differ_from_the_promised_sha256_are_data_loss(store, tmp_path, s3_client):
    src = write_adapter(tmp_path / "a", readme=None)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    entries = [common_pb2.FileEntry(name=n, size=len(b), sha256=hashlib.sha256(b).hexdigest())
               for n, b in sorted(files.items())]
    tampered = bytearray(files["adapter_model.safetensors"])
    tampered[-1] ^= 1

    def requests():
        yield store_pb2.PushRequest(header=store_pb2.PushHeader(name="bad", files=entries))
        yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file="adapter_config.json",
                                                          data=files["adapter_config.json"]))
        yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file="adapter_model.safetensors", data=bytes(tampered)))

    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(requests())
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "push again" in err.value.details()
    assert_nothing_visible(store, s3_client)


def test_bad_adapter_names_are_refused(store, tmp_path):
    with pytest.raises(AdapterFleetError) as err:
        store.client().push_dir(write_adapter(tmp_path / "a"), "Not A Name")
    assert err.value.code == "INVALID_ARGUMENT" and "tenant/name" in err.value.message


def test_push_without_header_is_invalid(store):
    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(iter([store_pb2.PushRequest(chunk=store_pb2.Chunk(file="x", data=b"1"))]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in err.value.details()


def test_real_peft_adapter_with_dora_and_modules_to_save_pushes(store, tmp_path):
    from tests.helpers.models import make_base_model, make_peft_adapter

    base = make_base_model("llama", tmp_path / "base")
    adapter = make_peft_adapter(base, tmp_path / "adapter", seed=1, r=4, use_dora=True,
                                target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    out = store.client().push_dir(adapter, "real")
    assert out.created and out.manifest.rank == 4
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    np.testing.assert_equal(out.manifest.version, 1)


def test_parent_and_base_model_fields_are_bounded(store, tmp_path, s3_client):
    """They go into every manifest and every Resolve of the version: a parent must be a canonical key, and the base
    model's name and fingerprint (given, or read from the config) have a length limit."""
    from adapterfleet.store.base_model import BaseModelIdentity

    client = store.client()
    src = write_adapter(tmp_path / "a")
    for kwargs, words in [({"parent": "x" * 100_000}, "ref"), ({"parent": "demo@3"}, "canonical adapter key"),
                          ({"base_model": BaseModelIdentity("m" * 2000)}, "name_or_path"),
                          ({"base_model": BaseModelIdentity("m", "f" * 2000)}, "fingerprint")]:
        with pytest.raises(AdapterFleetError) as err:
            client.push_dir(src, "bad", **kwargs)
        assert err.value.code == "INVALID_ARGUMENT" and words in err.value.message, err.value.message
    long_base = write_adapter(tmp_path / "b", config=lora_config(base_model_name_or_path="m" * 2000))
    assert "base_model_name_or_path" in push_refused(store, long_base)
    assert_nothing_visible(store, s3_client)


def test_a_file_not_sent_must_have_the_size_of_the_stored_bytes(store, tmp_path):
    """A header that names stored bytes (by sha256) with another size is refused: committed, every fetch of the
    version would fail its size check, and nothing could mend it (the bytes themselves are intact)."""
    from adapterfleet.store.client import adapter_files, hash_file
    from adapterfleet.store.manifest import FileEntry

    client = store.client()
    src = write_adapter(tmp_path / "a", readme="stored once\n")
    client.push_dir(src, "acme/first")  # the README's bytes are in the store now
    paths = adapter_files(src)
    entries = [hash_file(p) for p in paths]
    lying = [FileEntry(e.name, e.size + 1000, e.sha256) if e.name == "README.md" else e for e in entries]
    header = store_pb2.PushHeader(name="acme/second", files=[
        common_pb2.FileEntry(name=e.name, size=e.size, sha256=e.sha256) for e in lying])
    with pytest.raises(AdapterFleetError) as err:
        client._push_once(header, paths, lying, None, 1 << 20, dedupe=True)  # README.md is not sent
    assert err.value.code == "INVALID_ARGUMENT" and "README.md" in err.value.message, err.value.message
    with pytest.raises(AdapterFleetError):
        client.resolve("acme/second")
