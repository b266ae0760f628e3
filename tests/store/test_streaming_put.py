"""A blob from part_size up to single_put_max goes up as one streaming PUT whose last byte waits for the push's
verification (store/blobs/s3_put.py): whatever refuses the push, nothing is visible under any digest key."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc
from tests.helpers.synthetic import lora_config, write_adapter

WEIGHTS = "adapter_model.safetensors"


def big(tmp_path, name="big", **kw):
    return write_adapter(tmp_path / name, r=16, hidden=1024, layers=24, seed=11, **kw)  # ~6.3 MB of weights


def raw_push(address, files: dict[str, bytes], promised: dict[str, bytes], name="t/big", cut: int | None = None):
    """Push ``files`` under a header that promises ``promised``'s sizes and sha256; ``cut``: stop after that many
    bytes of the weights (the client went away)."""
    entries = [common_pb2.FileEntry(name=n, size=len(b), sha256=hashlib.sha256(b).hexdigest())
               for n, b in promised.items()]

    def requests():
        yield store_pb2.PushRequest(header=store_pb2.PushHeader(name=name, files=entries))
        for n, data in files.items():
            end = len(data) if cut is None or n != WEIGHTS else cut
            for off in range(0, end, 1 << 20):
                piece = data[off:min(end, off + (1 << 20))]
                yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file=n, offset=off, data=piece))

    with grpc.insecure_channel(address) as channel:
        return store_pb2_grpc.AdapterStoreStub(channel).Push(requests(), timeout=60)


def visible(s3_client, bucket: str, data: bytes) -> bool:
    try:
        s3_client.head_object(Bucket=bucket, Key=f"sha256/{hashlib.sha256(data).hexdigest()}")
        return True
    except s3_client.exceptions.ClientError:
        return False


def contents(src) -> dict[str, bytes]:
    order = ["adapter_config.json", WEIGHTS, "README.md"]
    return {n: (src / n).read_bytes() for n in order}


def test_a_big_blob_goes_up_in_one_put_and_reads_back_identical(store, s3_client, tmp_path):
    src = big(tmp_path)
    files = contents(src)
    assert len(files[WEIGHTS]) > store.config.s3.part_size  # the streaming PUT's range
    out = raw_push(store.address, files, files)
    assert out.created
    bucket = store.config.s3.bucket
    key = f"sha256/{hashlib.sha256(files[WEIGHTS]).hexdigest()}"
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == files[WEIGHTS]
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert store.client().fetch("t/big@1")[1][WEIGHTS] == files[WEIGHTS]


def test_bytes_that_are_not_the_promised_ones_leave_nothing_visible(store, s3_client, tmp_path):
    files = contents(big(tmp_path))
    sent = dict(files)
    altered = bytearray(files[WEIGHTS])
    altered[len(altered) // 2] ^= 0x01
    sent[WEIGHTS] = bytes(altered)
    with pytest.raises(grpc.RpcError) as err:
        raw_push(store.address, sent, files)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
    bucket = store.config.s3.bucket
    assert not visible(s3_client, bucket, files[WEIGHTS]) and not visible(s3_client, bucket, sent[WEIGHTS])


def test_a_push_refused_by_validation_leaves_its_big_blob_invisible(store, s3_client, tmp_path):
    """The weights hash right, but their tensors do not match the config (rank 16 against r=8)."""
    src = big(tmp_path, config=lora_config(8, targets=("q_proj", "v_proj")))
    files = contents(src)
    assert json.loads(files["adapter_config.json"])["r"] == 8  # the tensors are rank 16
    with pytest.raises(grpc.RpcError) as err:
        raw_push(store.address, files, files)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert not visible(s3_client, store.config.s3.bucket, files[WEIGHTS])


def test_a_client_that_goes_away_mid_blob_leaves_nothing(store, s3_client, tmp_path):
    files = contents(big(tmp_path))
    with pytest.raises(grpc.RpcError):
        raw_push(store.address, files, files, cut=3 << 20)
    assert not visible(s3_client, store.config.s3.bucket, files[WEIGHTS])
    out = raw_push(store.address, files, files)  # and the same blob goes up whole afterwards
    assert out.created and visible(s3_client, store.config.s3.bucket, files[WEIGHTS])


def test_a_put_that_s3_refuses_fails_the_push_typed_and_does_not_hang(store, s3_client, tmp_path):
    files = contents(big(tmp_path))
    s3_client.delete_bucket(Bucket=store.config.s3.bucket)  # empty: nothing was pushed yet
    with pytest.raises(grpc.RpcError) as err:
        raw_push(store.address, files, files)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert store.config.s3.bucket in err.value.details()
