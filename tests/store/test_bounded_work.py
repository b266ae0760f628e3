"""Bounded work in a running store: a hostile push fails alone while other calls are answered, heavy validation runs
away from the event loop, and every list and cursor in a request is checked before work is done on it. (How long
other calls wait meanwhile is measured by benchmarks/store_stall.py, not asserted here.)"""

from __future__ import annotations

import threading
from dataclasses import replace

import grpc
import numpy as np
import pytest

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.store.client import StoreClient
from adapterfleet.v1 import common_pb2, registry_pb2, registry_pb2_grpc, store_pb2, store_pb2_grpc
from tests.helpers.servers import start_store
from tests.helpers.synthetic import lora_config, lora_tensors, write_adapter


def refused(fn, *args, **kw) -> tuple[str, str]:
    with pytest.raises(AdapterFleetError) as err:
        fn(*args, **kw)
    return err.value.code, err.value.message


def rpc_code(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args, timeout=60)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            next(iter(result))
    return err.value.code(), err.value.details()


@pytest.fixture
def stub(store):
    channel = grpc.insecure_channel(store.address, options=CHANNEL_OPTIONS)
    yield store_pb2_grpc.AdapterStoreStub(channel)
    channel.close()


def test_a_catastrophic_pattern_fails_alone(store, tmp_path):
    c, other = store.client(), store.client()
    key = str(c.push_dir(write_adapter(tmp_path / "ok"), "t/ok").manifest.key)
    module = "a" * 60  # '(a|aa)+b' against it: about 1.5e12 backtracking steps under re
    bad = write_adapter(tmp_path / "bad", config=lora_config(target_modules="(a|aa)+b"), tensors={
        f"base_model.model.{module}.lora_A.weight": np.zeros((4, 8), np.float32),
        f"base_model.model.{module}.lora_B.weight": np.zeros((8, 4), np.float32),
    })
    answers: list[str] = []
    done = threading.Event()

    def resolve_meanwhile() -> None:
        while not done.is_set() or not answers:
            answers.append(other.resolve("t/ok@1").key)

    resolver = threading.Thread(target=resolve_meanwhile)
    resolver.start()
    try:
        code, message = refused(c.push_dir, bad, "t/bad")
    finally:
        done.set()
        resolver.join(60)
    assert code == "INVALID_ARGUMENT" and "backtracks catastrophically" in message
    assert answers and set(answers) == {key}
    assert refused(c.resolve, "t/bad")[0] == "NOT_FOUND"


def test_heavy_headers_and_configs_are_validated_off_the_loop(store, tmp_path):
    c = store.client()
    config = lora_config(r=1, targets=("q_proj",))
    many = lora_tensors(r=1, hidden=1, layers=1300, targets=("q_proj",))  # 2,600 tensors: a header over 256 KiB
    pushed = c.push_dir(write_adapter(tmp_path / "heavy", config=config, tensors=many), "t/heavy")
    assert pushed.created and pushed.manifest.rank == 1

    wrong = dict(many)
    wrong["base_model.model.model.layers.777.self_attn.q_proj.lora_A.weight"] = np.zeros((2, 1), np.float32)
    code, message = refused(c.push_dir, write_adapter(tmp_path / "wrong", config=config, tensors=wrong), "t/wrong")
    assert code == "INVALID_ARGUMENT" and "model.layers.777.self_attn.q_proj" in message

    # a config over 16 KiB (900 rank_pattern keys)
    ranks = {**{f"nomatch_{i}": 2 for i in range(900)}, r"layers\.3\.self_attn\.q_proj": 2}
    heavy_config = lora_config(r=1, targets=("q_proj",), rank_pattern=ranks)
    four = lora_tensors(r=1, hidden=2, layers=4, targets=("q_proj",))
    code, message = refused(c.push_dir, write_adapter(tmp_path / "c1", config=heavy_config, tensors=four), "t/c")
    assert code == "INVALID_ARGUMENT" and "rank_pattern" in message and "layers.3" in message
    prefix = "base_model.model.model.layers.3.self_attn.q_proj"
    four[f"{prefix}.lora_A.weight"], four[f"{prefix}.lora_B.weight"] = np.ones((2, 2)), np.ones((2, 2))
    assert c.push_dir(write_adapter(tmp_path / "c2", config=heavy_config, tensors=four), "t/c").created


def test_missing_blobs_is_bounded(store_config, tmp_path):
    cfg = replace(store_config, limits=replace(store_config.limits, max_digests=8))
    address, _, stop = start_store(cfg)
    c = StoreClient(address)
    try:
        digests = [f"{i:064x}" for i in range(8)]
        asked = store_pb2.MissingBlobsRequest(sha256=[*digests, digests[0]])  # 9 entries, 8 distinct
        code, message = refused(c._call, "MissingBlobs", asked)
        assert code == "INVALID_ARGUMENT" and "MissingBlobsRequest.sha256 has 9 entries" in message
        assert list(c._call("MissingBlobs", store_pb2.MissingBlobsRequest(sha256=digests)).sha256) == digests
        twice = store_pb2.MissingBlobsRequest(sha256=digests[:4] + digests[:4])
        assert list(c._call("MissingBlobs", twice).sha256) == digests[:4]
    finally:
        c.close()
        stop()


@pytest.mark.parametrize("cursor", ["abc", "1", "1-", "-1-0", "0\n", "１-0", "18446744073709551616-0", "9" * 10_000])
def test_a_bad_watch_cursor_is_invalid_argument(stub, cursor):
    code, details = rpc_code(stub.Watch, store_pb2.WatchRequest(cursor=cursor))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "watch cursor" in details and len(details) < 400


def test_good_watch_cursors_are_accepted(store, tmp_path):
    c = store.client()
    c.push_dir(write_adapter(tmp_path / "a"), "t/a")
    first = next(iter(c.watch(cursor="0")))
    assert first.type == "VERSION_PUSHED"
    assert next(iter(c.watch(cursor="0-0"))).cursor == first.cursor
    assert refused(lambda: next(iter(c.watch(cursor="0", name="Not A Name"))))[0] == "INVALID_ARGUMENT"


def test_every_list_in_a_request_has_a_limit(store, stub):
    files = [common_pb2.FileEntry(name=f"f{i}.md", size=1, sha256="0" * 64) for i in range(10_000)]
    header = store_pb2.PushRequest(header=store_pb2.PushHeader(name="t/files", files=files))
    code, details = rpc_code(stub.Push, iter([header]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "PushHeader.files has 10000 entries" in details

    many = [common_pb2.AliasTarget(version=i, weight=1) for i in range(1, 1001)]
    code, details = rpc_code(stub.SetAlias, store_pb2.SetAliasRequest(name="t/a", alias="x", targets=many))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "SetAliasRequest.targets has 1000 entries" in details
    expect = store_pb2.AliasExpectation(targets=many)
    for call, request in ((stub.SetAlias, store_pb2.SetAliasRequest(
            name="t/a", alias="x", targets=[common_pb2.AliasTarget(version=1, weight=100)], expect=expect)),
                          (stub.DeleteAlias, store_pb2.DeleteAliasRequest(name="t/a", alias="x", expect=expect))):
        code, details = rpc_code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "expect.targets has 1000 entries" in details

    code, details = rpc_code(stub.ListAdapters, store_pb2.ListAdaptersRequest(prefix="p" * 10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 400

    registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(store.address, options=CHANNEL_OPTIONS))
    adapters = [registry_pb2.ResidentAdapter(key=f"t/a@sha256:{i:064x}") for i in range((1 << 16) + 1)]
    code, details = rpc_code(registry.Announce, registry_pb2.WorkerInfo(id="w", address="127.0.0.1:1",
                                                                       adapters=adapters))
    # over 4 MiB: gRPC refuses the message before it is decoded (the store's max_receive_bytes), typed either way
    assert ((code == grpc.StatusCode.INVALID_ARGUMENT and "WorkerInfo.adapters has 65537 entries" in details)
            or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details)), (code, details[:200])
